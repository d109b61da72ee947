"""Extractive question answering without torch: question/context pairs to windows, logits to answer spans.

A context longer than a window is split into overlapping windows of ``max_seq_len``
tokens that share ``doc_stride`` tokens (the tokenizer's own overflow, as
transformers' question-answering pipeline asked it for). In each window the start and
end logits of tokens outside the context (the question, special tokens, padding; the
CLS token aside) are pushed to -10000, each is softmaxed over its window, and a span
scores start probability x end probability; spans that end before they start or run
past ``max_answer_len`` tokens are left out. Spans map back to the context's characters
through the words their first and last tokens belong to. With
``handle_impossible_answer`` the empty answer competes with the smallest CLS score
(start x end at position 0) of any window. Answers of every window are ranked together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ArtifactError, InputError

MASKED = -10000.0  # the pipeline's logit for tokens that cannot be part of an answer
DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128
FIELDS = ("question", "context")


@dataclass(frozen=True)
class Answer:
    """One answer: the context's characters ``start:end`` and the span's probability (empty: no answer)."""

    answer: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "score": self.score, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class QuestionAnswer:
    """The top-k answers to one question about one context, best first."""

    question: str
    answers: tuple[Answer, ...]

    @property
    def best(self) -> Answer | None:
        return self.answers[0] if self.answers else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best.to_dict() if self.best else {"answer": None, "score": 0.0, "start": None, "end": None}
        return {**best, "answers": [a.to_dict() for a in self.answers]}


def read_pair(item: Any, index: int) -> tuple[str, str]:
    """(question, context) of one input: a dict, a (question, context) tuple, or a JSON object string."""
    if isinstance(item, str):
        try:
            item = json.loads(item)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            raise InputError(f"input {index} is a string but not a JSON object; a question-answering model takes "
                             '{"question": ..., "context": ...} (zoo predict: --question Q --context C)')
    if isinstance(item, tuple) and len(item) == 2:
        item = dict(zip(FIELDS, item))
    if not isinstance(item, dict):
        raise InputError(f"input {index} is {type(item).__name__}; a question-answering model takes "
                         '{"question": ..., "context": ...} or a (question, context) tuple')
    missing = [f for f in FIELDS if not isinstance(item.get(f), str) or not item[f].strip()]
    if missing:
        raise InputError(f"input {index} lacks a non-empty {' and '.join(missing)}; give "
                         '{"question": ..., "context": ...}')
    return item["question"], item["context"]


@dataclass(frozen=True)
class WindowBatch:
    """The windows of a batch of pairs as graph arrays, and what span decoding needs of each window."""

    arrays: dict[str, np.ndarray]
    questions: list[str]
    contexts: list[str]
    owner: list[int]  # per window, the pair it comes from
    encodings: list[Any]  # per window, its tokenizers Encoding (offsets, words, sequence ids)
    allowed: np.ndarray  # [windows, sequence] bool: tokens an answer may start or end on (and CLS)
    context_index: int  # which sequence of the pair is the context


class PairPreprocessor:
    """Question/context pairs -> overlapping windows, with the artifact's tokenizer and window settings."""

    def __init__(self, folder: Path, manifest: Any):
        from zoo.tasks.preprocess import TextPreprocessor

        # TextPreprocessor reads and checks tokenizer.json and the padding settings
        self._setup(Path(folder), manifest.preprocess, TextPreprocessor(folder, manifest))

    @classmethod
    def from_record(cls, folder: Path, record: dict[str, Any], inputs: list[tuple[str, Any]]) -> PairPreprocessor:
        """Built from a preprocess record before the manifest exists (the exporter's own check)."""
        from zoo.tasks.preprocess import TextPreprocessor

        self = cls.__new__(cls)
        self._setup(Path(folder), record, TextPreprocessor.from_record(folder, record, inputs))
        return self

    def _setup(self, folder: Path, pp: dict[str, Any], text: Any) -> None:
        padding = text.tokenizer.padding or {}
        self.pad_id, self.pad_type_id = int(padding.get("pad_id", 0)), int(padding.get("pad_type_id", 0))
        self.max_seq_len = int(pp.get("max_seq_len") or min(DEFAULT_MAX_SEQ_LEN, text.max_length))
        self.doc_stride = int(pp.get("doc_stride") or min(self.max_seq_len // 2, DEFAULT_DOC_STRIDE))
        # the pipeline puts the question first when the tokenizer pads on the right (every model zoo exports)
        self.context_index = 1 if padding.get("direction", "right") == "right" else 0
        self.cls_id = pp.get("cls_token_id")
        if self.max_seq_len > text.max_length or not 0 <= self.doc_stride < self.max_seq_len:
            raise ArtifactError(f"{folder}/manifest.json: max_seq_len {self.max_seq_len} / doc_stride "
                                f"{self.doc_stride} do not fit the model's {text.max_length} tokens; re-export")
        self.tokenizer = text.tokenizer
        self.tokenizer.no_padding()  # windows are padded together below, whichever pair they come from
        self.tokenizer.enable_truncation(self.max_seq_len, stride=self.doc_stride,
                                         strategy="only_second" if self.context_index == 1 else "only_first")
        self.inputs = text.inputs

    def __call__(self, items: Sequence[Any]) -> WindowBatch:
        from zoo.tasks.preprocess import _check_text

        pairs = [read_pair(item, i) for i, item in enumerate(items)]
        for i, (question, context) in enumerate(pairs):
            _check_text(question, i)
            _check_text(context, i)
        ordered = [p if self.context_index == 1 else (p[1], p[0]) for p in pairs]
        windows, owner = [], []
        for i, encoding in enumerate(self.tokenizer.encode_batch(ordered)):
            for window in [encoding, *encoding.overflowing]:
                windows.append(window)
                owner.append(i)
        if any(len(w.sequence_ids) and self.context_index not in w.sequence_ids for w in windows):
            raise InputError(f"a question leaves no room for its context in {self.max_seq_len} tokens; "
                             "shorten the question")
        return WindowBatch(self._arrays(windows), [p[0] for p in pairs], [p[1] for p in pairs], owner, windows,
                           self._allowed(windows), self.context_index)

    def _arrays(self, windows: list[Any]) -> dict[str, np.ndarray]:
        length = max(len(w.ids) for w in windows)
        fields = {"input_ids": ("ids", self.pad_id), "attention_mask": ("attention_mask", 0),
                  "token_type_ids": ("type_ids", self.pad_type_id)}
        arrays = {}
        for name, dtype in self.inputs:
            attribute, pad = fields[name]
            rows = [getattr(w, attribute) for w in windows]
            arrays[name] = np.array([r + [pad] * (length - len(r)) for r in rows], dtype=dtype)
        return arrays

    def _allowed(self, windows: list[Any]) -> np.ndarray:
        length = max(len(w.ids) for w in windows)
        allowed = np.zeros((len(windows), length), dtype=bool)
        for row, window in enumerate(windows):
            allowed[row, :len(window.ids)] = [s == self.context_index for s in window.sequence_ids]
            if self.cls_id is not None:  # the CLS token stays: models point at it for "no answer"
                allowed[row, :len(window.ids)] |= np.asarray(window.ids) == self.cls_id
        return allowed


def window_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int,
                 max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(starts, ends, scores) of one window's top-k spans over allowed tokens, and its null score."""
    start = np.where(allowed, start, np.float32(MASKED))
    end = np.where(allowed, end, np.float32(MASKED))
    start = np.exp(start - start.max())
    start = start / start.sum()
    end = np.exp(end - end.max())
    end = end / end.sum()
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0  # position 0 (CLS) is the null answer, never a span
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, allowed)
    return starts, ends, scores, null


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``top_k`` best spans (start <= end < start + max_answer_len) whose ends are both allowed tokens.

    As the pipeline does, the top k are chosen first and the disallowed among them dropped
    after, so a window may give fewer than k.
    """
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    flat = scores.ravel()
    k = min(top_k, flat.size)
    best = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    best = best[np.argsort(-flat[best], kind="stable")]
    starts, ends = np.unravel_index(best, scores.shape)
    keep = allowed[starts] & allowed[ends]
    return starts[keep], ends[keep], scores[starts[keep], ends[keep]]


def char_span(encoding: Any, first: int, last: int, sequence: int) -> tuple[int, int]:
    """Characters of the context from the word of token ``first`` to the word of token ``last``.

    Whole words, as the pipeline aligns answers; a tokenizer without words keeps the tokens' offsets.
    """
    start_word, end_word = encoding.token_to_word(first), encoding.token_to_word(last)
    if start_word is not None and end_word is not None:
        start_chars = encoding.word_to_chars(start_word, sequence)
        end_chars = encoding.word_to_chars(end_word, sequence)
        if start_chars is not None and end_chars is not None:
            return int(start_chars[0]), int(end_chars[1])
    return int(encoding.offsets[first][0]), int(encoding.offsets[last][1])


def answers(batch: WindowBatch, start_logits: np.ndarray, end_logits: np.ndarray, top_k: int,
            max_answer_len: int, handle_impossible_answer: bool) -> list[QuestionAnswer]:
    """The top-k answers of every pair, over all its windows."""
    found: list[list[Answer]] = [[] for _ in batch.questions]
    null: list[float] = [1e6] * len(batch.questions)  # the pipeline's "large and positive" start
    for row, pair in enumerate(batch.owner):
        starts, ends, scores, window_null = window_spans(start_logits[row].astype(np.float32),
                                                         end_logits[row].astype(np.float32), batch.allowed[row],
                                                         top_k, max_answer_len)
        null[pair] = min(null[pair], window_null)
        context = batch.contexts[pair]
        for first, last, score in zip(starts.tolist(), ends.tolist(), scores.tolist()):
            begin, stop = char_span(batch.encodings[row], first, last, batch.context_index)
            found[pair].append(Answer(context[begin:stop], float(score), begin, stop))
    results = []
    for pair, question in enumerate(batch.questions):
        if handle_impossible_answer:
            found[pair].append(Answer("", null[pair], 0, 0))
        ranked = sorted(found[pair], key=lambda a: a.score, reverse=True)[:top_k]
        results.append(QuestionAnswer(question, tuple(ranked)))
    return results
