"""How a segmentation export is checked: per-pixel agreement, and the torch-free halves against transformers.

Agreement (torch vs onnxruntime): each picture's logits, from either side, become a
class map at the picture's own size by the runtime's upsampling; at least 99.9% of
the pixels must get the same class (the rest are near-ties between two classes).

Parity (export time, on torch's outputs): the runtime's preprocessing against the
processor's arrays, and the runtime's class maps against
``post_process_semantic_segmentation(outputs, target_sizes=...)``: the same shape
(height, width) and 99.9% of pixels alike. A map upsampled with another
interpolation, or with its axes swapped, fails it (tests plant both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.checks import Check
from zoo.tasks import _dense
from zoo.tasks._detection_verify import case_sizes
from zoo.tasks.base import Case

MIN_AGREEMENT = 0.999  # share of pixels with the same class, as the issue states


class PixelAgreement:
    """Per-pixel argmax agreement of torch and onnxruntime over the grid, at each picture's size."""

    def __init__(self) -> None:
        self.same = self.total = self.broken = 0
        self.worst = 1.0
        self.failures: list[str] = []

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref, out = reference["logits"], got.get("logits", np.empty(0))
        if ref.shape != out.shape:
            self.broken += 1
            self.failures.append(f"{case.label}: logits {list(out.shape)} vs torch {list(ref.shape)}")
            return
        for i, size in enumerate(case_sizes(case)):
            same = int((_dense.class_map(ref[i], size) == _dense.class_map(out[i], size)).sum())
            share = same / (size[0] * size[1])
            self.same, self.total, self.worst = self.same + same, self.total + size[0] * size[1], min(self.worst, share)
            if share < MIN_AGREEMENT:
                self.failures.append(f"{case.label} picture {i}: {share:.4%} of pixels agree")

    def check(self) -> Check:
        ok = not self.failures and self.total > 0
        detail = "; ".join(self.failures[:3]) or f"{self.total} pixels compared"
        return Check("per-pixel classes agree", ok, f"worst picture {self.worst:.4%}",
                     f">= {MIN_AGREEMENT:.1%} of pixels with torch's class", detail)


def postprocessing_check(stage: Path, cases: list[Case], references: list[dict[str, np.ndarray]]) -> Check:
    """The runtime's class maps against ``post_process_semantic_segmentation`` on torch's logits."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(stage), backend="pil")
    worst, wrong, compared = 1.0, [], 0
    for case, ref in zip(cases, references):
        sizes = case_sizes(case)
        theirs = transformers_maps(processor, ref["logits"], sizes)
        for i, (size, their) in enumerate(zip(sizes, theirs)):
            mine = _dense.class_map(ref["logits"][i], size)
            compared += 1
            if mine.shape != their.shape:
                wrong.append(f"{case.label} picture {i}: map {list(mine.shape)} vs {list(their.shape)}")
                worst = 0.0
                continue
            share = float((mine == their).mean())
            worst = min(worst, share)
            if share < MIN_AGREEMENT:
                wrong.append(f"{case.label} picture {i}: {share:.4%} of pixels agree")
    return Check("class maps (numpy vs transformers)", not wrong and compared > 0, f"worst picture {worst:.4%}",
                 f"same size, >= {MIN_AGREEMENT:.1%} of pixels alike", "; ".join(wrong[:3]))


def transformers_maps(processor: Any, logits: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    from types import SimpleNamespace

    import torch

    outputs = SimpleNamespace(logits=torch.from_numpy(logits))
    return [m.numpy() for m in processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)]
