"""Vectors compared by cosine similarity: the embedding tasks' agreement, and the default accuracy gate of
``zoo optimize`` (any float output can be judged this way)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from zoo.checks import Check

# zoo optimize's embedding gate: every vector close to its reference, and nearly all of them very close
MIN_COSINE = 0.99
MEAN_COSINE = 0.995


class CosineGate:
    """zoo optimize's gate for vectors: minimum cosine >= MIN_COSINE and mean >= MEAN_COSINE to the reference."""

    limits: ClassVar[dict[str, float]] = {"min_cosine": MIN_COSINE, "mean_cosine": MEAN_COSINE}
    labelled = False

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []

    def add(self, reference: np.ndarray, got: np.ndarray, mask: np.ndarray | None) -> None:
        if reference.shape != got.shape:
            self.values.append(np.full(max(len(reference), 1), -1.0))  # a wrong shape never agrees
            return
        self.values.append(np.nan_to_num(cosines(reference, got, mask), nan=-1.0))

    def checks(self, against: str, data: str) -> list[Check]:
        values = np.concatenate(self.values) if self.values else np.empty(0)
        found = bool(len(values))
        detail = f"{len(values)} vectors" + (f", worst is number {int(np.argmin(values))}" if found else "")
        detail += f"; data: {data}"
        return [Check(f"{against}: minimum cosine", found and bool(values.min() >= MIN_COSINE),
                      f"{values.min():.4f}" if found else "none", f">= {MIN_COSINE}", detail),
                Check(f"{against}: mean cosine", found and bool(values.mean() >= MEAN_COSINE),
                      f"{values.mean():.4f}" if found else "none", f">= {MEAN_COSINE}", detail)]


def cosines(reference: np.ndarray, got: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity per row (pooled embeddings) or per real token (hidden states)."""
    ref = reference.astype(np.float64)
    out = got.astype(np.float64)
    if ref.ndim == 3 and mask is not None:
        keep = mask.astype(bool)
        ref, out = ref[keep], out[keep]
    ref = ref.reshape(-1, ref.shape[-1])
    out = out.reshape(-1, out.shape[-1])
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    return (ref * out).sum(1) / np.maximum(norms, 1e-30)
