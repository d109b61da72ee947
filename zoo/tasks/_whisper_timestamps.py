"""Whisper's timestamp tokens: the rules that keep them well-formed while decoding, and the segments they mark.

Whisper's vocabulary ends with 1,501 timestamp tokens, ``<|0.00|>`` to ``<|30.00|>`` in steps of
0.02 s, right after ``<|notimestamps|>``. Asked for timestamps, the decoder prompt leaves
``<|notimestamps|>`` out and every step's scores go through the rules transformers'
``WhisperTimeStampLogitsProcessor`` applies (after the suppressed tokens, as ``generate`` orders them):

- ``<|notimestamps|>`` never comes;
- timestamps come in pairs (a segment's end, the next one's start): after a lone timestamp only another
  timestamp or the end of text; after a pair only text;
- timestamps never go back in time, and a pair's second one is never repeated as the next start;
- the first token is a timestamp, at most ``max_initial_timestamp_index`` steps into the window;
- where all timestamps together are likelier than the likeliest text token, a timestamp comes.

``segments`` cuts the tokens of one window at each pair, as ``generate`` does (``_retrieve_segment``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TIME_PRECISION = 0.02  # seconds per timestamp step (30 s / 1500)


@dataclass(frozen=True)
class TimestampRules:
    """The ids the rules need (from the model's generation_config.json) and where generated tokens begin."""

    no_timestamps: int
    eos: int
    max_initial: int | None  # max_initial_timestamp_index; None: any first timestamp
    begin_index: int  # the decoder prompt's length: rules look at generated tokens only

    @property
    def first(self) -> int:
        return self.no_timestamps + 1  # <|0.00|>

    def apply(self, scores: np.ndarray, sequences: np.ndarray) -> np.ndarray:
        """``scores`` [rows, vocab] for the token after ``sequences`` [rows, length], changed in place."""
        first = self.first
        scores[:, self.no_timestamps] = -np.inf
        for k, row in enumerate(sequences[:, self.begin_index:].tolist()):
            last = len(row) >= 1 and row[-1] >= first
            before_last = len(row) < 2 or row[-2] >= first
            if last and before_last:
                scores[k, first:] = -np.inf  # a pair just closed: text next
            elif last:
                scores[k, :self.eos] = -np.inf  # a lone timestamp: its pair or the end next
            stamps = [t for t in row if t >= first]
            lowest = first
            if stamps:  # never back in time; a pair's end is not the next start
                lowest = stamps[-1] if last and not before_last else stamps[-1] + 1
            scores[k, first:lowest] = -np.inf
        if sequences.shape[1] == self.begin_index:
            scores[:, :first] = -np.inf
            if self.max_initial is not None:
                scores[:, first + self.max_initial + 1:] = -np.inf
        logprobs = _log_softmax(scores)
        stamp = _logsumexp(logprobs[:, first:])
        text = logprobs[:, :first].max(axis=-1)
        scores[stamp > text, :first] = -np.inf
        return scores


@dataclass(frozen=True)
class Segment:
    """A stretch of the clip, in seconds, and the words said in it."""

    start: float
    end: float
    text: str
    token_ids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 2), "end": round(self.end, 2), "text": self.text}


def split(tokens: list[int], first: int, seconds: float) -> list[tuple[float, float, list[int]]]:
    """One window's generated tokens (end of text left out) -> (start, end, tokens) per segment.

    A timestamp pair closes a segment and opens the next; a lone timestamp at the end closes the last one.
    The segments up to the last pair are ``generate``'s (``_retrieve_segment``). Where text follows the last
    pair with no closing timestamp (the window ran out, or ``max_new_tokens``), ``generate`` drops it and decodes
    again from that timestamp; zoo decodes each window once, so that text is a last segment from the pair to
    ``seconds``. Without any pair the whole window is one segment, ending at its last timestamp if it has one
    past 0, else at ``seconds`` (the clip's length: zoo knows it, where ``generate`` takes the 30 s window).
    """
    stamp = [t >= first for t in tokens]
    cuts = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    if not cuts:
        ends = [t for t in tokens if t >= first]
        end = (ends[-1] - first) * TIME_PRECISION if ends and ends[-1] != first else seconds
        return [(0.0, end, tokens)] if tokens else []
    lone_end = stamp[-2:] == [False, True]
    if lone_end:
        cuts.append(len(tokens))
    else:
        cuts[-1] += 1  # the last pair's second timestamp stays with its segment
    out, start = [], 0
    for i, cut in enumerate(cuts):
        piece = tokens[start:cut]
        at = -1 if i < len(cuts) - 1 or lone_end else -2
        out.append(((piece[0] - first) * TIME_PRECISION, (piece[at] - first) * TIME_PRECISION, piece))
        start = cut
    if start < len(tokens):  # text after the last pair, never closed
        opened = (tokens[start - 1] - first) * TIME_PRECISION  # the pair's second timestamp
        out.append((opened, max(seconds, opened), tokens[start:]))
    return out


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=-1, keepdims=True)
    shifted = scores - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # every timestamp ruled out: log(0) = -inf, as torch gives
        return (np.log(np.exp(values - safe).sum(axis=-1)) + safe[:, 0]).astype(values.dtype)
