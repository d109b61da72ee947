"""What every decode loop shares, torch-free: position ids under left padding, how the next token is chosen.

Used by the causal-LM runtime (``zoo.runtime.generate``), the encoder-decoder core (``zoo.tasks._seq2seq_decode``)
and their export checks; it sits with the tasks so that those checks run the very code the runtime runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import InputError

DEFAULT_NEW_TOKENS = 64


def positions(mask: np.ndarray) -> np.ndarray:
    """transformers' position ids under left padding (``generate``): real tokens count from 0, padding sits at 1."""
    return np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1).astype(np.int64)


def penalise(scores: np.ndarray, seen: list[list[int]], penalty: float) -> np.ndarray:
    """``scores`` [rows, vocab] with each row's ``seen`` tokens made less likely by ``penalty``, in place (1: none)."""
    if penalty != 1.0:
        for row, ids in enumerate(seen):
            ids = np.unique(np.asarray(ids, np.int64))
            hit = scores[row, ids]
            # as transformers does: a repeated token's logit moves toward "less likely" whatever its sign
            scores[row, ids] = np.where(hit < 0, hit * penalty, hit / penalty)
    return scores


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; temperature 0 is greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def choose(self, logits: np.ndarray, seen: list[list[int]], rng: np.random.Generator) -> np.ndarray:
        """The next token of each row of ``logits`` [batch, vocab] (``seen``: each row's tokens so far)."""
        scores = penalise(logits.astype(np.float64), seen, self.repetition_penalty)
        if self.temperature == 0:
            return scores.argmax(-1)
        return np.array([self._sample(row / self.temperature, rng) for row in scores])

    def _sample(self, scores: np.ndarray, rng: np.random.Generator) -> int:
        if 0 < self.top_k < len(scores):
            kth = np.partition(scores, -self.top_k)[-self.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            # keep the smallest set of best tokens whose probability reaches top_p (always the best one)
            cut = int(np.searchsorted(np.cumsum(probs[order]), self.top_p)) + 1
            kept = np.zeros_like(probs)
            kept[order[:cut]] = probs[order[:cut]]
            probs = kept / kept.sum()
        return int(rng.choice(len(probs), p=probs))


def sampling_settings(defaults: dict[str, Any], max_new_tokens: int | None, temperature: float | None,
                      top_k: int | None, top_p: float | None,
                      repetition_penalty: float | None) -> tuple[int, Sampling]:
    """Generation options, each defaulting to the model's generation_config.json (``defaults``); bad values are
    one InputError. Shared by causal LMs (``Generator``) and encoder-decoders (``zoo.tasks._seq2seq_text``)."""
    sampled = bool(defaults.get("do_sample"))
    new = max_new_tokens if max_new_tokens is not None else int(defaults.get("max_new_tokens")
                                                                 or DEFAULT_NEW_TOKENS)
    values = {"temperature": temperature if temperature is not None
              else (float(defaults.get("temperature", 1.0)) if sampled else 0.0),
              "top_k": top_k if top_k is not None else (int(defaults.get("top_k") or 0) if sampled else 0),
              "top_p": top_p if top_p is not None else (float(defaults.get("top_p", 1.0)) if sampled else 1.0),
              "repetition_penalty": repetition_penalty if repetition_penalty is not None
              else float(defaults.get("repetition_penalty", 1.0))}
    problems = []
    if not isinstance(new, int) or isinstance(new, bool) or new < 1:
        problems.append(f"max_new_tokens={new!r} must be a whole number >= 1")
    if not values["temperature"] >= 0:
        problems.append(f"temperature={values['temperature']!r} must be >= 0 (0 is greedy)")
    if not (isinstance(values["top_k"], int) and values["top_k"] >= 0):
        problems.append(f"top_k={values['top_k']!r} must be a whole number >= 0 (0: no limit)")
    if not 0 < values["top_p"] <= 1:
        problems.append(f"top_p={values['top_p']!r} must be in (0, 1]")
    if not values["repetition_penalty"] > 0:
        problems.append(f"repetition_penalty={values['repetition_penalty']!r} must be > 0 (1: none)")
    if problems:
        raise InputError("; ".join(problems) + "; fix the option (leave it out for the model's default)")
    return new, Sampling(**values)
