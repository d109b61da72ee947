"""``zoo chat`` and the generation flags it shares with ``zoo predict``: a text-generation artifact in a terminal.

    zoo predict artifacts/llama "The capital of France is" --max-new-tokens 32    # streams the continuation
    zoo chat artifacts/smollm2 --system "Answer in one sentence." --temperature 0.7 --seed 0

The chat keeps the conversation and sends all of it through the model's chat template at each
turn (``ExportedModel.stream_chat``). ``/reset`` clears it, ``/exit`` or Ctrl-D leaves; Ctrl-C
stops the reply being written (what was written stays in the conversation) and, at the prompt,
leaves. The prompt goes to stderr unless both ends are a terminal, so a scripted chat's stdout
holds the replies only, one after another, each ended by a newline.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app
from zoo.errors import InputError, ZooError

PROMPT = "> "
COMMANDS = "/reset clears the conversation, /exit or Ctrl-D leaves"


def _positive(value: float | None, flag: str, rule: str) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not {rule}", param_hint=f"'{flag}'")
    return value


def _top_p(value: float | None) -> float | None:
    if value is not None and value > 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]; e.g. 0.9 keeps the likeliest tokens up to 90%",
                                 param_hint="'--top-p'")
    return _positive(value, "--top-p", "in (0, 1]; e.g. 0.9 keeps the likeliest tokens up to 90%")


def _penalty(value: float | None) -> float | None:
    return _positive(value, "--repetition-penalty", "> 0 (1 is none; 1.1 discourages repeats)")


def _stops(values: list[str] | None) -> list[str] | None:
    """Stop strings as typed in a shell: ``\\n`` and ``\\t`` are a newline and a tab (``--stop '\\n\\n'``)."""
    if not values:
        return None
    if any(not v for v in values):
        raise typer.BadParameter("an empty stop string would stop at once; give some text, e.g. --stop '\\n\\n'",
                                 param_hint="'--stop'")
    return [v.replace("\\n", "\n").replace("\\t", "\t") for v in values]


# The generation flags, declared once for zoo predict and zoo chat (typer reads them from each signature).
MaxNewTokens = Annotated[int | None, typer.Option(
    "--max-new-tokens", min=1, help="Most tokens to generate (text generation; default: the model's "
    "generation_config.json, else 64).")]
Temperature = Annotated[float | None, typer.Option(
    "--temperature", min=0.0, help="Sampling temperature; 0 is greedy (text generation; default: the model's).")]
TopP = Annotated[float | None, typer.Option(
    "--top-p", callback=_top_p, help="Sample from the likeliest tokens whose probabilities add up to this, "
    "in (0, 1] (text generation).")]
RepetitionPenalty = Annotated[float | None, typer.Option(
    "--repetition-penalty", callback=_penalty, help="Above 1 makes tokens already seen less likely "
    "(text generation).")]
Stop = Annotated[list[str] | None, typer.Option(
    "--stop", metavar="TEXT", callback=_stops, help="End the text where this string appears, left out "
    "(repeat for several; \\n is a newline; text generation).")]
Seed = Annotated[int | None, typer.Option(
    "--seed", min=0, help="Seed of the sampling, for repeatable output (text generation).")]


def generation_options(max_new_tokens: int | None = None, temperature: float | None = None,
                       top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                       stop: list[str] | None = None, seed: int | None = None) -> dict[str, Any]:
    """The options given on the command line, by the names ``generate`` takes (those left out are not passed)."""
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "repetition_penalty": repetition_penalty, "stop": stop, "seed": seed}
    return {name: value for name, value in given.items() if value is not None}


def check_flags(task: Any, options: dict[str, Any]) -> None:
    """Flags given for another task are one line naming them and the flags this artifact's task takes."""
    unknown = [name for name in options if name not in task.predict_options]
    if unknown:
        valid = ", ".join(_flag(name) for name in task.predict_options) or "none"
        verb = "does" if len(unknown) == 1 else "do"
        raise InputError(f"{', '.join(_flag(n) for n in unknown)} {verb} not apply to {task.name} artifacts; "
                         f"the flags for this one: {valid}")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def print_stream(pieces: Iterator[str], write: Callable[[str], None]) -> str:
    """Write the pieces as they come and end the line; return the text written.

    Nothing is written when the first piece fails (a prompt too long, a bad option): the error
    is then the only line. Ctrl-C ends the line before it goes on up."""
    said: list[str] = []
    try:
        for piece in pieces:
            write(piece)
            said.append(piece)
    except KeyboardInterrupt:
        write("\n")
        raise
    write("\n")
    return "".join(said)


def terminal_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()  # each piece shows as it comes, also when stdout is a pipe


class ChatSession:
    """A conversation with a chat model: the messages so far, each reply streamed and then kept."""

    def __init__(self, model: Any, options: dict[str, Any], system: str | None = None):
        self.model, self.options = model, options
        self.start = [{"role": "system", "content": system}] if system else []
        self.history = list(self.start)
        if self.start:
            model.chat_prompt(self.start)  # a template that refuses a system message says so before the chat

    def reset(self) -> None:
        self.history = list(self.start)

    def say(self, text: str, write: Callable[[str], None]) -> str:
        """Stream the reply to ``text`` and keep both turns. Ctrl-C stops the reply: what was written of it
        stays in the conversation (the model said it), and the interrupt goes on up to the caller."""
        asked = [*self.history, {"role": "user", "content": text}]
        pieces = self.model.stream_chat(asked, **self.options)
        said: list[str] = []
        try:
            reply = print_stream(_kept(pieces, said), write)
        except KeyboardInterrupt:
            if said:
                self.history = [*asked, {"role": "assistant", "content": "".join(said)}]
            raise
        # an error (a conversation past the context length) leaves the conversation as it was
        self.history = [*asked, {"role": "assistant", "content": reply}]
        return reply


def _kept(pieces: Iterator[str], said: list[str]) -> Iterator[str]:
    for piece in pieces:
        said.append(piece)
        yield piece


def run_chat(session: ChatSession, read: Callable[[], str], write: Callable[[str], None],
             note: Callable[[str], None]) -> int:
    """The read-reply loop; returns the exit code: 0, or 1 when a turn failed (its error was printed).

    ``read`` returns a line (EOFError at the end of the input, KeyboardInterrupt on Ctrl-C);
    ``write`` takes the replies, ``note`` one line for the person at the keyboard."""
    failed = False
    while True:
        try:
            line = read().strip()
        except (EOFError, KeyboardInterrupt):
            note("")  # the shell's prompt starts on its own line
            return int(failed)
        if not line:
            continue
        if line.startswith("/"):  # a command (a typo of one too), never sent to the model
            if line == "/exit":
                return int(failed)
            if line == "/reset":
                session.reset()
                note("(the conversation is cleared)")
            else:
                note(f"unknown command {line.split()[0]}: {COMMANDS}")
            continue
        try:
            session.say(line, write)
        except KeyboardInterrupt:
            note("(stopped)")
        except ZooError as exc:
            failed = True
            hint = " (the conversation so far counts too: /reset clears it)" if session.history != session.start \
                else ""
            note(f"error: {exc}{hint}")


def _reader() -> Callable[[], str]:
    """``input`` with line editing on a terminal; otherwise the prompt goes to stderr, so stdout is replies only."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:  # pragma: no cover - not on every platform
            pass
        return lambda: input(PROMPT)

    def read() -> str:
        sys.stderr.write(PROMPT)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    return read


@app.command("chat")
def chat(
    artifact: Annotated[Path, typer.Argument(help="A text-generation artifact whose tokenizer has a chat template.")],
    system: Annotated[str | None, typer.Option("--system", metavar="TEXT", help="A system message that opens "
                                               "the conversation (kept by /reset).")] = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0, help="Sample from the k likeliest tokens only "
                                              "(0: no limit).")] = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    stop: Stop = None,
    seed: Seed = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", metavar="NAME", help="onnxruntime execution "
                                                       "provider, e.g. cpu or cuda (repeat in order of "
                                                       "preference).")] = None,
    no_hash_check: Annotated[bool, typer.Option("--no-hash-check",
                                                help="Check file sizes only, not sha256 (faster start).")] = False,
) -> None:
    """Chat with a text-generation model through its own chat template; replies stream as they are written.

    /reset clears the conversation, /exit or Ctrl-D leaves; Ctrl-C stops a reply, or leaves at the prompt.
    """
    from zoo.runtime import load

    options = generation_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed)
    model = load(artifact, check_hashes=not no_hash_check, providers=provider or None)
    _check_chat_model(model, artifact)
    session = ChatSession(model, options, system)
    _note(f"chatting with {model.manifest.name}: {COMMANDS}")
    raise typer.Exit(run_chat(session, _reader(), terminal_write, _note))


def _note(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _check_chat_model(model: Any, artifact: Path) -> None:
    """A model that cannot chat is one line naming what it can do instead."""
    from zoo.tasks import get_task

    if not get_task(model.task).generates:
        raise InputError(f"zoo chat needs a text-generation artifact; {artifact} is {model.task}: run it with "
                         f"zoo predict {artifact} ...")
    if not model.manifest.preprocess["generation"].get("chat_template"):
        raise InputError(f"{artifact} has no chat template (its tokenizer names none), so it cannot chat; for "
                         f"plain completion run: zoo predict {artifact} \"your text\"")
