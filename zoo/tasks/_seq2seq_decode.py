"""The encoder-decoder core, torch-free side: generation from the two graphs in onnxruntime and numpy.

The runtime (``zoo.tasks._seq2seq_text``) and the export checks (``zoo.tasks._seq2seq_verify``) both run this
code, so what the checks compare with transformers is what ``zoo predict`` runs. The encoder graph (``encoder.onnx``) runs once per batch and gives, besides its hidden
states, every decoder layer's cross-attention keys and values; the decoder graph
(``model.onnx``) then runs once per new token on them and on its own self-attention
cache (``past_key_values.N.*`` in, ``present.N.*`` out), see ``zoo.tasks._seq2seq_torch``.
The cross-attention tensors and the cache stay in onnxruntime between steps (IO
binding); beam search reorders the cache by beam, which takes it through numpy.

Decoding follows transformers' ``generate``: the decoder starts from
``decoder_start_token_id`` (or a longer decoder prompt, Whisper's), greedy or sampled
(``zoo.tasks._decoding.Sampling``) or beam search with ``num_beams``,
``length_penalty``, ``early_stopping`` and the same bookkeeping of finished hypotheses;
``no_repeat_ngram_size``, ``bad_words_ids`` (single tokens), ``min_length``, forced BOS
(mBART's target language) and forced EOS apply to every step's scores.

API: ``EncoderDecoder(encoder_session, decoder_session, record)`` (``record``: the manifest's
``preprocess.generation``: ``decoder_start_token_id``, ``eos_token_ids``, ``pad_token_id``,
``kv_cache`` {heads, head_dim}); ``.encode(feed)`` runs the encoder on any inputs it takes
(``input_ids``/``attention_mask``, or Whisper's ``input_features``) and returns ``Encoded``;
``.generate(encoded, Decoding(...), prompt=None)`` returns each row's new token ids (EOS included
where it stopped; ``prompt`` [batch, n]: a decoder prompt longer than the start token).
``record_decoding(record, **changes)`` is the ``Decoding`` of the model's generation_config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.tasks._decoding import DEFAULT_NEW_TOKENS, Sampling, penalise

NEG = -1.0e9  # transformers' "never": a score no real hypothesis reaches


@dataclass(frozen=True)
class Decoding:
    """How the decoder chooses tokens (options as transformers' ``GenerationConfig`` names them)."""

    max_new_tokens: int = DEFAULT_NEW_TOKENS
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True | False | "never"
    no_repeat_ngram_size: int = 0
    min_length: int = 0  # of the whole decoder sequence, the start token included (as transformers counts)
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    bad_words_ids: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()  # Whisper's: never the first generated token
    timestamps: Any = None  # Whisper's timestamp rules (``_whisper_timestamps.TimestampRules``), applied last
    sampling: Sampling = Sampling()


@dataclass
class Encoded:
    """One batch through the encoder: its cross-attention tensors (numpy) and mask, ready for the decoder."""

    cross: list[np.ndarray]
    mask: np.ndarray | None  # encoder_attention_mask when the decoder takes one

    def repeat(self, times: int) -> Encoded:
        """Each row ``times`` times in a row (beam search's batch x beams)."""
        return Encoded([np.repeat(c, times, axis=0) for c in self.cross],
                       None if self.mask is None else np.repeat(self.mask, times, axis=0))


class EncoderDecoder:
    """The two graphs of one artifact and the ids generation needs (``preprocess.generation``)."""

    def __init__(self, encoder: Any, decoder: Any, record: dict[str, Any]):
        self.encoder, self.decoder, self.record = encoder, decoder, record
        self.eos = np.array(sorted(int(e) for e in record.get("eos_token_ids", [])), np.int64)
        self.pad = int(record.get("pad_token_id") or 0)
        self.start = int(record["decoder_start_token_id"])
        self.outputs = [o.name for o in decoder.get_outputs()]
        names = [i.name for i in decoder.get_inputs()]
        self.cache_names = [n for n in names if n.startswith("past_key_values.")]
        self.cross_names = [n for n in names if n.startswith("cross.")]
        self.masked = "encoder_attention_mask" in names
        self.encoder_outputs = [o.name for o in encoder.get_outputs()]
        self.device = "cuda" if decoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def encode(self, feed: dict[str, np.ndarray]) -> Encoded:
        outputs = dict(zip(self.encoder_outputs, self.encoder.run(self.encoder_outputs, feed)))
        return Encoded([outputs[n] for n in self.cross_names], feed.get("attention_mask") if self.masked else None)

    def generate(self, encoded: Encoded, decoding: Decoding, prompt: np.ndarray | None = None,
                 rng: np.random.Generator | None = None, trace: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Each row's new tokens (EOS included where it stopped) after ``prompt`` [batch, n] (default: the start
        token). ``trace`` (greedy and sampling) collects each step's scores [batch, vocab] as the choice saw them."""
        batch = len(encoded.cross[0])
        prompt = np.full((batch, 1), self.start, np.int64) if prompt is None else prompt.astype(np.int64)
        if decoding.num_beams > 1:
            return self._beam(encoded, decoding, prompt)
        return self._sample(encoded, decoding, prompt, rng or np.random.default_rng(), trace)

    # ------------------------------------------------------------ one step

    def empty(self, batch: int) -> list[np.ndarray]:
        layout = self.record["kv_cache"]
        shape = (batch, int(layout["heads"]), 0, int(layout["head_dim"]))
        return [np.zeros(shape, np.float32) for _ in self.cache_names]

    def bind(self, binding: Any, encoded: Encoded) -> list[Any]:
        """Bind what every step shares (the cross-attention tensors, as OrtValues, and the mask) once."""
        from onnxruntime import OrtValue

        values = [OrtValue.ortvalue_from_numpy(np.ascontiguousarray(c), self.device) for c in encoded.cross]
        for name, value in zip(self.cross_names, values):
            binding.bind_ortvalue_input(name, value)
        if encoded.mask is not None:
            mask = OrtValue.ortvalue_from_numpy(np.ascontiguousarray(encoded.mask, np.int64), self.device)
            binding.bind_ortvalue_input("encoder_attention_mask", mask)
            values.append(mask)
        return values  # held by the caller: bound by address, they must outlive every run

    def step(self, binding: Any, ids: np.ndarray, past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One decoder call on new tokens ``ids``: the last position's logits (numpy) and the grown cache."""
        from onnxruntime import OrtValue

        binding.clear_binding_outputs()
        ids = np.ascontiguousarray(ids, np.int64)
        binding.bind_cpu_input("decoder_input_ids", ids)
        for name, value in zip(self.cache_names, past):
            if isinstance(value, np.ndarray):
                value = OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device)
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, self.device)
        self.decoder.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[:, -1], present

    def _scores(self, scores: np.ndarray, sequences: np.ndarray, decoding: Decoding, new_tokens: int) -> np.ndarray:
        """transformers' logits processors that change which tokens may come next, in place (``sequences``: the
        decoder tokens so far, one row per hypothesis)."""
        length = sequences.shape[1]
        if decoding.no_repeat_ngram_size > 0:
            for row, banned in enumerate(_banned_ngrams(sequences, decoding.no_repeat_ngram_size)):
                scores[row, banned] = -np.inf
        if decoding.bad_words_ids:
            scores[:, list(decoding.bad_words_ids)] = -np.inf
        if decoding.begin_suppress_tokens and new_tokens == 0:
            scores[:, list(decoding.begin_suppress_tokens)] = -np.inf
        if length < decoding.min_length and len(self.eos):
            scores[:, self.eos] = -np.inf
        if decoding.forced_bos_token_id is not None and length == 1:
            scores[:] = -np.inf
            scores[:, decoding.forced_bos_token_id] = 0
        if decoding.forced_eos_token_id is not None and new_tokens == decoding.max_new_tokens - 1:
            scores[:] = -np.inf
            scores[:, decoding.forced_eos_token_id] = 0
        if decoding.timestamps is not None:
            decoding.timestamps.apply(scores, sequences)
        return scores

    # ------------------------------------------------------------ greedy and sampling

    def _sample(self, encoded: Encoded, decoding: Decoding, prompt: np.ndarray,
                rng: np.random.Generator, trace: list[np.ndarray] | None) -> list[np.ndarray]:
        batch = len(prompt)
        binding = self.decoder.io_binding()
        held = self.bind(binding, encoded)
        past: list[Any] = self.empty(batch)
        sequences, ids = prompt, prompt
        done = np.zeros(batch, bool)
        new: list[np.ndarray] = []
        for step in range(decoding.max_new_tokens):
            logits, past = self.step(binding, ids, past)
            scores = self._scores(logits.astype(np.float32), sequences, decoding, step)
            if trace is not None:
                trace.append(scores)
            token = np.where(done, self.pad, decoding.sampling.choose(scores, sequences.tolist(), rng))
            new.append(token)
            done |= np.isin(token, self.eos)
            if done.all():
                break
            ids = token.astype(np.int64)[:, None]
            sequences = np.concatenate([sequences, ids], axis=1)
        del held
        tokens = np.stack(new, axis=1)
        return [_until_eos(row, self.eos) for row in tokens]

    # ------------------------------------------------------------ beam search

    def _beam(self, encoded: Encoded, decoding: Decoding, prompt: np.ndarray) -> list[np.ndarray]:
        """transformers' vectorised beam search (``GenerationMixin._beam_search``), step for step, in numpy."""
        beams, (batch, start) = decoding.num_beams, prompt.shape
        length = start + decoding.max_new_tokens  # transformers' max_length
        keep = max(2, 1 + len(self.eos)) * beams  # candidates per row: enough to continue after some finish
        running = np.full((batch, beams, length), self.pad, np.int64)
        running[:, :, :start] = prompt[:, None, :]
        running_scores = np.zeros((batch, beams), np.float32)
        running_scores[:, 1:] = NEG  # the first step expands one beam only
        finished = running.copy()
        finished_scores = np.full((batch, beams), NEG, np.float32)
        finished_lengths = np.zeros((batch, beams), np.int64)
        is_finished = np.zeros((batch, beams), bool)
        improvable = np.ones((batch, 1), bool)
        binding = self.decoder.io_binding()
        held = self.bind(binding, encoded.repeat(beams))
        past: list[Any] = self.empty(batch * beams)
        ids = running[:, :, :start].reshape(batch * beams, start)
        top = np.arange(keep) < beams
        for cur in range(start, length):
            logits, present = self.step(binding, ids, past)
            logp = _log_softmax(logits.astype(np.float32))
            sequences = running[:, :, :cur].reshape(batch * beams, cur)
            logp = penalise(logp, sequences.tolist(), decoding.sampling.repetition_penalty)
            logp = self._scores(logp, sequences, decoding, cur - start)
            total = (logp.reshape(batch, beams, -1) + running_scores[:, :, None]).reshape(batch, -1)
            order = _top(total, keep)
            cand_scores = np.take_along_axis(total, order, axis=1)
            vocab = logp.shape[-1]
            source, token = order // vocab, order % vocab
            cand = np.take_along_axis(running, source[:, :, None], axis=1)
            cand[:, :, cur] = token
            hits = np.isin(token, self.eos) | (cur + 1 >= length)
            # the best candidates that go on (finished ones pushed out), and their cache rows
            going = cand_scores + hits * NEG
            pick = _top(going, beams)
            running = np.take_along_axis(cand, pick[:, :, None], axis=1)
            running_scores = np.take_along_axis(going, pick, axis=1)
            rows = (np.take_along_axis(source, pick, axis=1) + np.arange(batch)[:, None] * beams).reshape(-1)
            # candidates among the best ``beams`` that end here join the finished ones if they score higher
            ended = hits & top[None, :]
            scored = cand_scores / ((cur + 1 - start) ** decoding.length_penalty)
            scored = scored + (is_finished.all(-1, keepdims=True) & (decoding.early_stopping is True)) * NEG
            scored = scored + (~improvable) * NEG + (~ended) * NEG
            merged = np.concatenate([finished_scores, scored], axis=1)
            best = _top(merged, beams)
            finished = np.take_along_axis(np.concatenate([finished, cand], axis=1), best[:, :, None], axis=1)
            finished_scores = np.take_along_axis(merged, best, axis=1)
            lengths = np.concatenate([finished_lengths, np.full(cand_scores.shape, cur + 1)], axis=1)
            finished_lengths = np.take_along_axis(lengths, best, axis=1)
            is_finished = np.take_along_axis(np.concatenate([is_finished, ended], axis=1), best, axis=1)
            improvable = improvable & self._may_improve(running_scores, finished_scores, is_finished, cur + 1, start,
                                                        length, decoding)
            if not improvable.any() or (is_finished.all() and decoding.early_stopping is True) or hits.all():
                break
            past = [p.numpy()[rows] for p in present]
            ids = running[:, :, cur:cur + 1].reshape(batch * beams, 1)
        del held
        return [finished[b, 0, start:finished_lengths[b, 0]] for b in range(batch)]

    @staticmethod
    def _may_improve(running_scores: np.ndarray, finished_scores: np.ndarray, is_finished: np.ndarray, cur: int,
                     start: int, length: int, decoding: Decoding) -> np.ndarray:
        """transformers' early-stop heuristic: can the best running beam still beat the worst finished one?"""
        penalty = decoding.length_penalty
        hypothetical = length - start if decoding.early_stopping == "never" and penalty > 0 else cur - start
        best = running_scores[:, :1] / (hypothetical ** penalty)
        worst = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
        return np.any(best > worst, axis=-1, keepdims=True)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best column indices, best first (ties: the lower index first)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _banned_ngrams(sequences: np.ndarray, n: int) -> list[list[int]]:
    """Per row, the tokens that would repeat an n-gram the row already holds (``no_repeat_ngram_size``)."""
    banned = []
    for row in sequences.tolist():
        if len(row) + 1 < n:
            banned.append([])
            continue
        tail = tuple(row[len(row) - n + 1:])
        banned.append([row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == tail])
    return banned


def _until_eos(row: np.ndarray, eos: np.ndarray) -> np.ndarray:
    ends = np.nonzero(np.isin(row, eos))[0]
    return row[:ends[0] + 1] if len(ends) else row


def record_decoding(record: dict[str, Any], **changes: Any) -> Decoding:
    """The ``Decoding`` the model's generation_config.json (``record["defaults"]``) describes, greedy unless it
    samples, with ``changes`` on top; transformers' ``generate`` uses the same values."""
    defaults = record.get("defaults", {})
    values: dict[str, Any] = {
        "num_beams": int(defaults.get("num_beams") or 1), "length_penalty": float(defaults.get("length_penalty", 1.0)),
        "early_stopping": defaults.get("early_stopping", False),
        "no_repeat_ngram_size": int(defaults.get("no_repeat_ngram_size") or 0),
        "min_length": int(defaults.get("min_length") or 0),
        "forced_bos_token_id": defaults.get("forced_bos_token_id"),
        "forced_eos_token_id": defaults.get("forced_eos_token_id"),
        "bad_words_ids": tuple(record.get("bad_words_ids", ())),
        "sampling": Sampling(repetition_penalty=float(defaults.get("repetition_penalty", 1.0)))}
    values.update(changes)
    return Decoding(**values)
