"""``zoo predict`` streaming a text-generation artifact, ``zoo chat``, their generation flags and their bad input.

One tiny Qwen2 (tests/tiny.py, with its ChatML template) is exported per module, as
tests/test_text_generation.py exports its models. Its random weights end a greedy reply at once
or repeat one token, so the tests sample with a seed: the text then differs with every prompt and
conversation, and a run is repeatable.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import tiny
from tests.artifacts import copy_artifact
from tests.test_bad_input_cli import refusal_problem
from tests.test_text_generation import _export, _tiny
from zoo.cli import app, main
from zoo.errors import InputError

SAMPLED = {"max_new_tokens": 8, "temperature": 0.9, "seed": 3}
FLAGS = ["--max-new-tokens", "8", "--temperature", "0.9", "--seed", "3"]
PROMPT = "The capital of France is"
ROOT = Path(__file__).parents[1]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, registry):
    """(spec, artifact folder) of the tiny Qwen2, whose tokenizer has a chat template."""
    root = tmp_path_factory.mktemp("tiny-qwen2")
    spec = _tiny(registry, "qwen2.5-0.5b", root / "model")
    result = _export(spec, root / "artifact")
    assert result.report.passed, result.report.summary()
    return spec, result.path


@pytest.fixture(scope="module")
def model(qwen2):
    import zoo

    return zoo.load(qwen2[1])


def _with_template(artifact: Path, dest: Path, template: str | None) -> Path:
    """A copy of the artifact whose manifest records another chat template (None: none at all)."""
    copy_artifact(artifact, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["preprocess"]["generation"]["chat_template"] = template
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _zoo(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zoo", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


# ---------------------------------------------------------------- zoo predict


def test_predict_streams_the_text_that_generate_returns(qwen2, model):
    expected = model.generate(PROMPT, **SAMPLED)[0].text
    done = _zoo("predict", str(qwen2[1]), PROMPT, *FLAGS)
    assert done.returncode == 0, done.stderr
    assert expected and done.stdout == expected + "\n"


def test_predict_writes_each_piece_as_it_comes(qwen2, model, monkeypatch):
    from typer.testing import CliRunner

    import zoo.cli.runtime

    pieces: list[str] = []
    monkeypatch.setattr(zoo.cli.runtime, "terminal_write", pieces.append)
    done = CliRunner().invoke(app, ["predict", str(qwen2[1]), PROMPT, *FLAGS])
    assert done.exit_code == 0, done.output
    assert len(pieces) > 2 and pieces[-1] == "\n"  # one write per piece, then the end of the line
    assert "".join(pieces[:-1]) == model.generate(PROMPT, **SAMPLED)[0].text


def test_generation_flags_map_to_the_options_of_generate(qwen2, model, monkeypatch):
    from typer.testing import CliRunner

    from zoo.runtime.model import ExportedModel

    seen: list[dict[str, object]] = []
    original = ExportedModel.generate
    monkeypatch.setattr(ExportedModel, "generate",
                        lambda self, prompts, **options: (seen.append(options), original(self, prompts, **options))[1])
    args = ["--max-new-tokens", "6", "--temperature", "0.7", "--top-k", "40", "--top-p", "0.9",
            "--repetition-penalty", "1.2", "--stop", "\\n", "--stop", "xyz", "--seed", "5", "--json"]
    done = CliRunner().invoke(app, ["predict", str(qwen2[1]), PROMPT, *args])
    assert done.exit_code == 0, done.output
    options = {"max_new_tokens": 6, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.2,
               "stop": ["\n", "xyz"], "seed": 5}  # a typed \n is a newline
    assert seen == [options]
    [row] = json.loads(done.output)
    assert row == {"input": PROMPT, **original(model, PROMPT, **options)[0].to_dict()}  # the full typed result


def test_flags_of_another_task_are_named_with_the_valid_ones():
    from zoo.cli.chat import check_flags
    from zoo.tasks import get_task

    with pytest.raises(InputError) as caught:
        check_flags(get_task("text-classification"), {"temperature": 0.5, "seed": 1, "top_k": 2})
    assert str(caught.value) == ("--temperature, --seed do not apply to text-classification artifacts; the flags "
                                 "for this one: --top-k")
    check_flags(get_task("text-generation"), {"temperature": 0.5, "seed": 1, "top_k": 0})


# ---------------------------------------------------------------- zoo chat


def test_chat_replies_as_chat_does_keeps_the_conversation_and_resets(qwen2, model):
    system = {"role": "system", "content": "Be brief."}
    first = model.chat([system, _user("Hello")], **SAMPLED).text
    second = model.chat([system, _user("Hello"), _assistant(first), _user("Name a colour.")], **SAMPLED).text
    third = model.chat([system, _user("Name a colour.")], **SAMPLED).text  # after /reset: the system message only
    # the conversation changes the reply, so equal replies below show it was kept, and then cleared
    assert second != third
    script = "Hello\nName a colour.\n/reset\nName a colour.\n"  # then the end of the input, as Ctrl-D gives
    done = _zoo("chat", str(qwen2[1]), "--system", "Be brief.", *FLAGS, stdin=script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{first}\n{second}\n{third}\n"  # replies only: the prompts go to stderr
    assert "(the conversation is cleared)" in done.stderr and "Traceback" not in done.stderr


def test_exit_command_leaves_before_the_rest_of_the_input(qwen2, model):
    done = _zoo("chat", str(qwen2[1]), *FLAGS, stdin="Hello\n/exit\nNot sent\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == model.chat([_user("Hello")], **SAMPLED).text + "\n"


def _read_until(stream, text: str, deadline_s: float, after: str = "") -> str:
    """What the process wrote to ``stream`` until ``text`` shows after ``after`` (or the deadline passes)."""
    seen = ""
    end = time.monotonic() + deadline_s
    while not (after in seen and text in seen[seen.index(after) + len(after):]) and time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(stream.fileno(), 4096).decode(errors="replace")
            except OSError:  # a pseudo-terminal whose other end has closed: the end of its output
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT at its default in the chat, as a shell gives a command it runs in the foreground: a test run
    started in the background of a script inherits SIGINT ignored, and the chat would never see the key.
    Unblocked too: a blocked signal stays blocked across fork and exec, whatever its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _ctrl_c_until_gone(press, process: subprocess.Popen, presses: int = 3) -> int:
    """Press Ctrl-C, give the chat 10 s to leave, and press again if it has not (at most ``presses`` times);
    return the presses it took.

    A key can fall into a window that is the interpreter's, not the chat's: CPython's input() (readline's
    select) and stdin.readline() block in a system call, and a SIGINT that lands between the prompt being
    written and that call is noted by the handler but wakes nothing until the next key. A person presses
    again; so does the test, on a loaded machine where the window is widest."""
    for pressed in range(1, presses + 1):
        press()
        try:
            process.wait(timeout=10)
            return pressed
        except subprocess.TimeoutExpired:
            continue
    return presses + 1


def test_ctrl_c_at_the_prompt_leaves_cleanly(qwen2):
    process = subprocess.Popen([sys.executable, "-m", "zoo", "chat", str(qwen2[1])], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=_ctrl_c_as_in_a_terminal)  # noqa: PLW1509
    try:
        shown = _read_until(process.stderr, "> ", 120)
        assert "> " in shown, shown
        # what Ctrl-C does to the chat waiting for a line; stdin stays open: only the interrupt can end it
        presses = _ctrl_c_until_gone(lambda: process.send_signal(signal.SIGINT), process)
        process.kill()
        err = process.stderr.read()
    finally:
        process.kill()
    assert presses <= 3 and process.returncode == 0, err.decode()
    assert "Traceback" not in err.decode() and "interrupted" not in err.decode()


def test_in_a_terminal_a_turn_then_ctrl_c_typed_at_the_prompt(qwen2, model):
    """On a terminal (a pseudo-terminal here) the prompt is input()'s, with line editing; the Ctrl-C key
    reaches the chat as the terminal's SIGINT."""
    import fcntl
    import pty
    import termios

    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns: no odd wrapping
    process = subprocess.Popen([sys.executable, "-m", "zoo", "chat", str(qwen2[1]), *FLAGS], cwd=ROOT,
                               stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                               env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT below shows where it hung
                               preexec_fn=lambda: (_ctrl_c_as_in_a_terminal(),  # noqa: PLW1509
                                                   fcntl.ioctl(0, termios.TIOCSCTTY, 0)))
    os.close(terminal)
    reader = os.fdopen(main_fd, "rb", buffering=0)
    try:
        assert "> " in _read_until(reader, "> ", 120)
        os.write(main_fd, b"Hello\r")
        reply = model.chat([_user("Hello")], **SAMPLED).text
        shown = _read_until(reader, "> ", 60, after=reply)  # the prompt again after the reply, not a redraw
        presses = _ctrl_c_until_gone(lambda: os.write(main_fd, b"\x03"), process)  # the Ctrl-C key
        if process.poll() is None:  # still there: show where it waits, for the failure below
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
        shown += _read_until(reader, "never shown", 10)  # the rest, until the terminal's other end has closed
    finally:
        process.kill()
        reader.close()
    assert reply and reply in shown, shown
    assert presses <= 3 and process.returncode == 0 and "Traceback" not in shown, shown


class _Interrupted:
    """A model whose reply is cut by Ctrl-C after two pieces (the first time), as a person stops a long reply."""

    def __init__(self) -> None:
        self.asked: list[list[dict[str, str]]] = []

    def chat_prompt(self, messages):
        return ""

    def stream_chat(self, messages, **options):
        self.asked.append(messages)
        yield "Once"
        yield " upon"
        if len(self.asked) == 1:
            raise KeyboardInterrupt
        yield " a time"


def test_ctrl_c_during_a_reply_stops_it_and_returns_to_the_prompt():
    from zoo.cli.chat import ChatSession, run_chat

    model, written, notes = _Interrupted(), [], []
    lines = iter(["Tell a story", "/rest", "Go on"])

    def read() -> str:
        line = next(lines, None)
        if line is None:
            raise EOFError  # the end of the script, as Ctrl-D
        return line

    code = run_chat(ChatSession(model, {}), read, written.append, notes.append)
    assert code == 0
    assert "".join(written) == "Once upon\nOnce upon a time\n"
    assert "(stopped)" in notes
    assert "unknown command /rest: /reset clears the conversation, /exit or Ctrl-D leaves" in notes  # not sent
    # what was written of the stopped reply stays in the conversation: the model said it
    assert model.asked[1] == [_user("Tell a story"), _assistant("Once upon"), _user("Go on")]


# ---------------------------------------------------------------- bad input: one line, nothing written


def _refused(argv: list[str], phrase: str, capsys, cwd: Path) -> None:
    before = sorted(cwd.rglob("*"))
    with pytest.raises(SystemExit) as info:
        main(argv)
    _, err = capsys.readouterr()
    assert refusal_problem(info.value.code, err, phrase) is None, err
    assert sorted(cwd.rglob("*")) == before, "a refused command wrote files"


@pytest.mark.parametrize("args,phrase", [
    (["predict", "{art}", " ".join(["word"] * 300), "--out", "{out}/rows.jsonl"], "passes the model's context length"),
    (["predict", "{art}", PROMPT, "--max-new-tokens", "0"], "--max-new-tokens"),
    (["predict", "{art}", PROMPT, "--top-p", "1.5"], "--top-p"),
    (["predict", "{art}", PROMPT, "--stop", ""], "--stop"),
    (["predict", "{art}", PROMPT, "--threshold", "0.5"], "--threshold does not apply to text-generation"),
    (["chat", "{art}", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["chat", "{art}", "--repetition-penalty", "0"], "--repetition-penalty"),
])
def test_bad_generation_input_is_one_line(qwen2, args, phrase, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(art=qwen2[1], out=tmp_path / "out") for a in args]
    _refused(argv, phrase, capsys, tmp_path)


def test_chat_with_a_model_without_a_template_names_zoo_predict(qwen2, capsys, tmp_path, monkeypatch):
    plain = _with_template(qwen2[1], tmp_path / "plain", None)
    monkeypatch.chdir(tmp_path)
    _refused(["chat", str(plain)], f"zoo predict {plain}", capsys, tmp_path)


def test_chat_with_a_model_of_another_task_names_zoo_predict():
    from types import SimpleNamespace

    from zoo.cli.chat import _check_chat_model

    with pytest.raises(InputError, match="zoo chat needs a text-generation artifact; art is text-classification: "
                                         "run it with zoo predict art"):
        _check_chat_model(SimpleNamespace(task="text-classification"), Path("art"))


def test_a_conversation_past_the_context_is_one_error_line_and_the_chat_goes_on(qwen2, model):
    long = " ".join(["word"] * 300)
    done = _zoo("chat", str(qwen2[1]), *FLAGS, stdin=f"{long}\nHello\n")
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "context length" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == 1  # a turn failed; the next one still ran, on a conversation without it
    assert done.stdout == model.chat([_user("Hello")], **SAMPLED).text + "\n"


def test_an_unknown_role_is_refused_before_the_first_piece(model):
    with pytest.raises(InputError, match="message 1 has role 'wizard'; valid roles: system, user, assistant"):
        model.stream_chat([_user("Hi"), {"role": "wizard", "content": "abracadabra"}], **SAMPLED)


# ---------------------------------------------------------------- the template renders the roles it is given

SWAPPED = tiny.CHAT_TEMPLATE.replace(
    "{{ m['role'] }}", "{{ {'user': 'assistant', 'assistant': 'user'}.get(m['role'], m['role']) }}")
CONVERSATIONS = [
    [_user("Hello")],
    [{"role": "system", "content": "Be brief."}, _user("Name a colour."), _assistant("Blue."), _user("Another")],
]


def _rendering_differences(artifact: Path, source: Path) -> list[int]:
    """The conversations whose prompt, as the artifact's runtime renders it for chat, differs from what
    transformers' apply_chat_template renders with the source model's tokenizer."""
    import transformers

    import zoo

    model = zoo.load(artifact)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    return [i for i, messages in enumerate(CONVERSATIONS) if model.chat_prompt(messages) !=
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)]


def test_chat_renders_every_role_as_transformers_does(qwen2):
    spec, artifact = qwen2
    assert _rendering_differences(artifact, Path(spec.local_path)) == []


def test_a_template_that_swaps_roles_is_caught(qwen2, tmp_path):
    """Planted fault: the manifest's template writes 'assistant' for the user and 'user' for the assistant."""
    spec, artifact = qwen2
    swapped = _with_template(artifact, tmp_path / "swapped", SWAPPED)
    assert _rendering_differences(swapped, Path(spec.local_path)) == [0, 1]
