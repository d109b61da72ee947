"""Text generation from a text-generation artifact: onnxruntime and numpy, no torch.

    model = zoo.load("artifacts/llama")
    [result] = model.generate(["The capital of France is"], max_new_tokens=32)
    result.text, result.token_ids, result.finish_reason

Prompts are tokenised by the artifact's ``tokenizer.json`` and padded on the left, so
a batch's prompts end at the same column and every step appends one column. The
decoder graph runs on the prompts (from an empty cache, in chunks of ``PREFILL_CHUNK``
columns or groups of rows, so a long prompt's logits never sit in memory whole) and then once per new token;
between steps the cache stays in onnxruntime, never copied out to numpy. A graph whose
attention is onnxruntime's GroupQueryAttention (the fused export) appends to its cache in
place: each layer's past and present are bound (IO binding) to one buffer preallocated for
the prompt and every new token, so a step neither copies the cache nor allocates a larger
one. Other graphs (or another device) bind each step's ``present.N.*`` OrtValues as the next
step's ``past_key_values.N.*``. Only the last position's logits are read, to choose the
next token in numpy: repetition penalty, then greedy (temperature 0) or sampling with
temperature, top-k and top-p from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.errors import ArtifactError, InputError
from zoo.tasks._decoding import Sampling, positions, sampling_settings
from zoo.tasks.results import Generation

# prompt columns per graph call: a long prompt goes in chunks, each on the cache of those before, so the logits
# and attention scores of one call stay small (a 2,000-token prompt at once holds 400 MB of SmolLM2 logits alone;
# a chunk of 128, 25 MB, and as much again for their copy into numpy)
PREFILL_CHUNK = 128
# prompt positions (rows x columns) one prefill call of a batch holds on a GroupQueryAttention graph, whose kernel
# takes several tokens on a non-empty cache for one row only: rows go together, whole prompts from their empty
# cache, as many a call as this holds (SmolLM2: 200 MB of logits); a row wider than half of it goes alone in chunks
PREFILL_BATCH = 1024
# settled tokens decoded again before each new one, so that decoding the new text sees the tokens it follows
TEXT_CONTEXT = 4


class Generator:
    """The decode loop of one artifact: its session, tokenizer and ``preprocess.generation`` record."""

    def __init__(self, session: Any, manifest: Any, preprocessor: Any):
        record = manifest.preprocess.get("generation")
        if not isinstance(record, dict) or "kv_cache" not in record:
            raise ArtifactError(f"{manifest.name}: manifest.json has no preprocess.generation record (EOS ids, KV "
                                "layout); re-export the artifact with this zoo")
        self.session, self.preprocessor, self.record = session, preprocessor, record
        self.tokenizer = preprocessor.tokenizer
        self.eos = {int(e) for e in record.get("eos_token_ids", [])}
        self.pad = int(record.get("pad_token_id") or 0)
        self.context = int(record.get("context_length") or preprocessor.max_length)
        self.outputs = [o.name for o in session.get_outputs()]
        self.cache_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        fusion = record.get("fusion") or {}
        # onnxruntime's kernel runs a chunk of several tokens on a non-empty cache for one row at a time
        self.grouped = fusion.get("kept") == "fused" and "GroupQueryAttention" in fusion.get("fused", {})
        # appending in place needs the buffer where numpy can make it: the CPU
        self.shared = self.grouped and self.device == "cpu"

    def settings(self, max_new_tokens: int | None, temperature: float | None, top_k: int | None,
                 top_p: float | None, repetition_penalty: float | None) -> tuple[int, Sampling]:
        """The options, each defaulting to the model's generation_config.json; bad values are one InputError."""
        return sampling_settings(self.record.get("defaults", {}), max_new_tokens, temperature, top_k, top_p,
                                 repetition_penalty)

    def generate(self, prompts: Sequence[str], **options: Any) -> list[Generation]:
        """Every prompt's continuation (options: see ``steps``)."""
        rows: list[_Row] = []
        for rows in self.steps(prompts, **options):
            pass
        return [Generation(r.text, tuple(r.new), len(r.prompt), len(r.new), r.finish or "length") for r in rows]

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """One prompt's continuation as pieces of text, each as soon as it is certain.

        A piece is held back while it ends in an incomplete character (a byte-level token
        can carry half of one) or could be the start of a stop string, so the pieces joined
        are exactly ``generate``'s text.
        """
        for piece, _ in self.pieces(prompt, **options):
            if piece:
                yield piece

    def pieces(self, prompt: str, **options: Any) -> Iterator[tuple[str, _Row]]:
        """``stream``'s loop, one item per new token: the text it made certain (often '') and the row so far
        (token counts, finish reason), for callers that report usage or stop between tokens (``zoo serve``)."""
        stops = _stop_strings(options.get("stop"))
        sent = 0
        for [row] in self.steps([prompt], **options):
            text = row.text if row.finish is not None else _certain(row.text, stops)
            yield text[sent:], row
            sent = max(sent, len(text))

    def chat(self, messages: Any, **options: Any) -> Generation:
        """The assistant's reply to ``messages``, prompted through the model's own chat template."""
        # the template writes the special tokens itself, as transformers' apply_chat_template tokenises it
        return self.generate([self.chat_prompt(messages)], special_tokens=False, **options)[0]

    def chat_prompt(self, messages: Any) -> str:
        """The prompt ``chat`` continues: ``messages`` through the model's own template (tokenise it with
        ``special_tokens=False``)."""
        from zoo.runtime.chat import check_messages, render_chat

        template = self.record.get("chat_template")
        if not template:
            raise InputError("this model has no chat template (its tokenizer_config.json names none): use generate "
                             "with a plain prompt, or export a chat (instruct) model")
        return render_chat(template, check_messages(messages), bos_token=self.record.get("bos_token", ""),
                           eos_token=self.record.get("eos_token", ""))

    def steps(self, prompts: Sequence[str], *, max_new_tokens: int | None = None, temperature: float | None = None,
              top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
              stop: Sequence[str] | None = None, seed: int | None = None,
              special_tokens: bool = True) -> Iterator[list[_Row]]:
        """The decode loop: every row's state after each new token. Options left out take the model's defaults;
        ``stop`` strings end a row's text (not included); ``seed`` seeds sampling; ``special_tokens=False``
        tokenises without the tokenizer's own BOS/EOS (a rendered chat template holds them)."""
        new, sampling = self.settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        stops = _stop_strings(stop)
        if not prompts:
            raise InputError("generate got no prompts; give one string or a list of them")
        ids, mask = self._encode(list(prompts), special_tokens)
        lengths = mask.sum(1)
        if not lengths.all():
            raise InputError(f"prompt {int(np.argmin(lengths))} makes no tokens; the model continues a text: give it "
                             "at least one word")
        too_long = [i for i, n in enumerate(lengths) if n + new > self.context]
        if too_long:
            first = too_long[0]
            raise InputError(f"prompt {first} has {self._length(prompts[first], special_tokens)} tokens; with "
                             f"max_new_tokens={new} that passes the model's context length of {self.context} tokens: "
                             "shorten the prompt or ask for fewer new tokens")
        rng = np.random.default_rng(seed)
        rows = [_Row(list(map(int, i[m.astype(bool)]))) for i, m in zip(ids, mask)]
        binding = self.session.io_binding()
        past = self._shared_cache(len(rows), ids.shape[1] + new) if self.shared else self._empty_cache(len(rows))
        decoder: _Decoder | None = None
        for step in range(new):
            if not step:
                logits, past = self._prefill(binding, ids, mask, past)
                decoder = _Decoder(self, past, logits.shape) if self.shared else None
            elif decoder is not None:
                logits = decoder.run(ids, mask)
            else:
                logits, past = self._step(binding, ids, mask, past)
            tokens = sampling.choose(logits, [r.prompt + r.new for r in rows], rng)
            for row, token in zip(rows, tokens):
                if row.finish is None:
                    self._append(row, int(token), new, stops)
            yield rows
            if all(row.finish is not None for row in rows):
                return
            # a finished row is fed padding, as generate() does; its output is no longer read
            ids = np.array([[r.new[-1] if r.finish is None else self.pad] for r in rows], np.int64)
            mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)

    def _encode(self, prompts: list[str], special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
        if special_tokens:
            arrays = self.preprocessor(prompts).arrays
            return arrays["input_ids"], arrays["attention_mask"]
        encodings = self.tokenizer.encode_batch(prompts, add_special_tokens=False)  # padded left, as configured
        return (np.array([e.ids for e in encodings], np.int64), np.array([e.attention_mask for e in encodings],
                                                                         np.int64))

    def _length(self, prompt: str, special_tokens: bool) -> int:
        """The prompt's whole length in tokens: the runtime's tokenizer stops at the model's length, so a prompt
        past it would be told as exactly that long."""
        from tokenizers import Tokenizer

        whole = Tokenizer.from_str(self.tokenizer.to_str())  # a copy: the shared tokenizer is only read
        whole.no_truncation()
        whole.no_padding()
        return len(whole.encode(prompt, add_special_tokens=special_tokens).ids)

    def _append(self, row: _Row, token: int, limit: int, stops: list[str]) -> None:
        if token in self.eos:
            row.finish = "stop"
            return
        row.new.append(token)
        row.text = self._text(row)
        cut = min((i for i in (row.text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            row.text, row.finish = row.text[:cut], "stop"
        elif len(row.new) >= limit:
            row.finish = "length"

    def _text(self, row: _Row) -> str:
        """The text of ``row.new``, decoding only the tokens since the last settled point: decoding them all at
        every step costs time in proportion to the text (0.33 ms a step at 1,500 tokens, SmolLM2's tokenizer).

        The tokens are decoded from ``TEXT_CONTEXT`` before that point, with and without the new ones, and the
        difference is the new text: a decoder's rules at the start of a text (a leading space stripped) apply to
        both alike. Where the shorter one is not the end of the settled text (the window starts inside a
        character, or inside a run of byte tokens that decodes as one) or not the start of the longer (a byte
        token turned the run before it into U+FFFD), wider windows are tried, then the whole text. The
        point moves up to the end whenever the text does not end in half a character (U+FFFD)."""
        decode = self.tokenizer.decode
        for context in (TEXT_CONTEXT, 4 * TEXT_CONTEXT, 16 * TEXT_CONTEXT):
            start = max(0, row.settled - context)
            head = decode(row.new[start:row.settled], skip_special_tokens=True)
            whole = decode(row.new[start:], skip_special_tokens=True)
            if row.settled_text.endswith(head) and whole.startswith(head):
                text = row.settled_text + whole[len(head):]
                break
            if not start:  # the window was the whole text
                text = whole
                break
        else:  # decoded once, not as a head and a whole
            text = decode(row.new, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            row.settled, row.settled_text = len(row.new), text
        return text

    def _empty_cache(self, batch: int) -> list[Any]:
        from onnxruntime import OrtValue

        layout = self.record["kv_cache"]
        shape = (batch, int(layout["kv_heads"]), 0, int(layout["head_dim"]))
        return [OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), self.device) for _ in self.cache_names]

    def _shared_cache(self, batch: int, length: int) -> list[Any]:
        """Zeroed buffers [batch, kv heads, ``length``, head dim], one per cache input, wrapped without a copy."""
        layout = self.record["kv_cache"]
        shape = (batch, int(layout["kv_heads"]), length, int(layout["head_dim"]))
        return [_Buffer(np.zeros(shape, np.float32)) for _ in self.cache_names]

    def _prefill(self, binding: Any, ids: np.ndarray, mask: np.ndarray,
                 past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """The prompts through the graph; the last column's logits.

        A graph goes ``PREFILL_CHUNK`` columns at a time, every row in each call, unless GroupQueryAttention
        holds its batch to one row on a non-empty cache: then the rows go in groups of whole prompts into their
        rows of the shared buffers, as many a call as ``PREFILL_BATCH`` positions hold (a row alone in chunks
        past that), or (no shared buffer) all in one call."""
        if not self.grouped or len(ids) == 1:
            return self._chunks(binding, ids, mask, past, PREFILL_CHUNK)
        if not self.shared:
            return self._chunks(binding, ids, mask, past, ids.shape[1])
        rows = max(1, PREFILL_BATCH // ids.shape[1])
        chunk = ids.shape[1] if rows > 1 else PREFILL_CHUNK
        logits = [self._chunks(binding, ids[i:i + rows], mask[i:i + rows], [b.rows(i, i + rows) for b in past],
                               chunk)[0] for i in range(0, len(ids), rows)]
        return np.concatenate(logits), past

    def _chunks(self, binding: Any, ids: np.ndarray, mask: np.ndarray, past: list[Any],
                chunk: int) -> tuple[np.ndarray, list[Any]]:
        for start in range(0, ids.shape[1], chunk):
            end = start + chunk
            logits, past = self._step(binding, ids[:, start:end], mask[:, :end], past)
        return logits, past

    def _step(self, binding: Any, ids: np.ndarray, mask: np.ndarray, past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One graph call; returns the last position's logits (numpy) and the grown cache (OrtValues, or the
        shared buffers it was appended to)."""
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        feed = _bind_tokens(binding, ids, mask)  # noqa: F841 (held: bound by address, it must outlive the run)
        if self.shared:
            binding.bind_output(self.outputs[0], self.device)  # first: get_outputs() lists them as bound
            _bind_shared_cache(binding, self.cache_names, past)
        else:
            for name, value in zip(self.cache_names, past):
                binding.bind_ortvalue_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[:, -1], past if self.shared else present


def _bind_tokens(binding: Any, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and position_ids bound as CPU inputs (a name bound before is replaced); returns
    the arrays, which are bound by address: the caller holds them until the run is done."""
    feed = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ascontiguousarray(mask),
            "position_ids": np.ascontiguousarray(positions(mask)[:, -ids.shape[1]:])}
    for name, array in feed.items():
        binding.bind_cpu_input(name, array)
    return feed


def _bind_shared_cache(binding: Any, names: list[str], past: list[_Buffer]) -> None:
    """Each layer's past input and present output bound to its one shared buffer: the kernel appends in place."""
    for name, buffer in zip(names, past):
        binding.bind_ortvalue_input(name, buffer.value)
        binding.bind_ortvalue_output(name.replace("past_key_values.", "present.", 1), buffer.value)


class _Decoder:
    """The decode steps on the shared cache buffers: one new token a row, so every step binds the same buffers
    and a logits array of the same shape. Those are bound once, here; a step binds only the three token inputs
    again (SmolLM2: 4 binding calls where a fresh binding takes 124, and no output to wrap and copy out)."""

    def __init__(self, generator: Generator, past: list[Any], shape: tuple[int, ...]):
        from onnxruntime import OrtValue

        self.session, self.binding = generator.session, generator.session.io_binding()
        self.logits = np.empty((shape[0], 1, shape[-1]), np.float32)  # [batch, one position, vocabulary]
        self.value = OrtValue.ortvalue_from_numpy(self.logits)  # onnxruntime writes into the array's memory
        self.binding.bind_ortvalue_output(generator.outputs[0], self.value)
        _bind_shared_cache(self.binding, generator.cache_names, past)
        self.feed: dict[str, np.ndarray] = {}

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The step's logits [batch, vocabulary], a copy: the next step writes the same array."""
        self.feed = _bind_tokens(self.binding, ids, mask)
        self.session.run_with_iobinding(self.binding)
        return self.logits[:, -1].copy()


class _Buffer:
    """A preallocated cache tensor and the OrtValue onnxruntime reads and appends to: the same memory."""

    def __init__(self, array: np.ndarray):
        from onnxruntime import OrtValue

        self.array = array  # held: the OrtValue wraps this memory, it does not own a copy
        self.value = OrtValue.ortvalue_from_numpy(array)

    def rows(self, start: int, end: int) -> _Buffer:
        """Rows ``start`` to ``end`` (excluded), sharing this buffer's memory."""
        return _Buffer(self.array[start:end])


@dataclass
class _Row:
    """One prompt's state in the loop."""

    prompt: list[int]
    new: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    settled: int = 0  # new[:settled] decodes to settled_text, which ends in a whole character
    settled_text: str = ""


def _certain(text: str, stops: list[str]) -> str:
    """The part of a growing text no later token can change: without a trailing incomplete character
    (U+FFFD, what decoding half of a UTF-8 sequence gives) and without a tail that may begin a stop string."""
    text = text.rstrip("\ufffd")
    hold = max((n for s in stops for n in range(1, min(len(s), len(text)) + 1) if text.endswith(s[:n])), default=0)
    return text[:len(text) - hold]


def _stop_strings(stop: Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    bad = [s for s in stop if not isinstance(s, str) or not s]
    if bad:
        raise InputError(f"stop={list(stop)!r}: stop strings must be non-empty strings, e.g. stop=['\\n\\n']")
    return list(stop)
