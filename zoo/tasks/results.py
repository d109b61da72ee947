"""Typed prediction results, one per input, each with ``to_dict()`` for JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np


@dataclass(frozen=True)
class Classification:
    """The top-k labels of one input, best first, with softmax scores."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score,
                "top_k": [{"label": lab, "score": s} for lab, s in zip(self.labels, self.scores)]}


@dataclass(frozen=True)
class Entity:
    """A span of words sharing one entity type; ``start``/``end`` index characters of the input."""

    label: str
    score: float
    start: int
    end: int
    word: str

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "start": self.start, "end": self.end, "word": self.word}


@dataclass(frozen=True)
class TokenClassification:
    """The entities found in one text (words labelled with the "O" label are left out)."""

    text: str
    entities: tuple[Entity, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "entities": [e.to_dict() for e in self.entities]}


@dataclass(frozen=True, eq=False)
class Embedding:
    """One input's embedding: (dim,) when pooled, (tokens, dim) for per-token hidden states."""

    vector: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.vector.shape)

    def __repr__(self) -> str:
        # the vector itself is too long to print; its shape and norm say what it is
        return f"Embedding(shape={self.shape}, norm={float(np.linalg.norm(self.vector)):.4f})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.vector if dtype is None else self.vector.astype(dtype)

    # a @ b as with the arrays users expect back (the cosine of two normalised embeddings); numpy's own
    # operators already take an Embedding through __array__
    def __matmul__(self, other: Any) -> Any:
        return self.vector @ np.asarray(other)

    def __rmatmul__(self, other: Any) -> Any:
        return np.asarray(other) @ self.vector

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "vector": self.vector.tolist()}


Prediction = Union[Classification, TokenClassification, Embedding]


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation: the text and ids of the new tokens (EOS excluded) and why it ended."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (EOS or a stop string) | length (max_new_tokens reached)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": list(self.token_ids), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason}


@dataclass(frozen=True)
class Transcription:
    """The text heard in one clip, and the clip's length in seconds."""

    text: str
    seconds: float = 0.0
    chunks: int = 1  # windows the clip was cut into (CTC)
    window: float = 0.0  # seconds the model hears (Whisper: 30); 0 when long clips are chunked
    token_ids: tuple[int, ...] = ()  # Whisper: the generated tokens, EOS left out (CTC: none)
    segments: tuple[Any, ...] = ()  # Whisper with timestamps: ``_whisper_timestamps.Segment`` each
    language: str = ""  # Whisper: the language code its prompt named (given or detected)

    @property
    def note(self) -> str | None:
        if not self.window or self.seconds <= self.window + 1e-6:
            return None
        return f"clip is {self.seconds:.2f} s; the model heard its first {self.window:.0f} s"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "seconds": round(self.seconds, 4), "chunks": self.chunks}
        if self.token_ids:
            out["token_ids"] = list(self.token_ids)
        if self.segments:
            out["segments"] = [s.to_dict() for s in self.segments]
        return {**out, "note": self.note} if self.note else out
