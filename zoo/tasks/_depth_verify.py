"""How a depth export is checked: relative error of the resized depth, and the torch-free resize against transformers.

Relative error here is a picture's largest absolute difference divided by the largest
absolute depth torch gives it: depth is judged at the picture's own size, after the
runtime's bicubic resize, so an error the resize would amplify shows.

Agreement (torch vs onnxruntime): relative error at most 1e-3 per picture.
Parity (export time, on torch's outputs): the runtime's resize against
``post_process_depth_estimation(outputs, target_sizes=...)``: the same (height, width)
and relative error at most 1e-4. A map resized with its axes swapped, or with another
interpolation, fails it (tests plant both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.checks import Check
from zoo.tasks import _dense
from zoo.tasks._detection_verify import case_sizes
from zoo.tasks.base import Case

MAX_ERROR = 1e-3  # torch vs onnxruntime, of the picture's largest depth
MAX_RESIZE_ERROR = 1e-4  # numpy's resize vs torch's, float32 rounding apart


def relative_error(reference: np.ndarray, got: np.ndarray) -> float:
    """max |got - reference| / max |reference| (inf when the shapes differ)."""
    if reference.shape != got.shape:
        return float("inf")
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
    return float(np.abs(got.astype(np.float64) - reference).max(initial=0.0)) / scale


class DepthAgreement:
    """The relative error of onnxruntime's depth against torch's, each resized to its picture, over the grid."""

    def __init__(self) -> None:
        self.pictures, self.worst = 0, 0.0
        self.failures: list[str] = []

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref, out = reference["predicted_depth"], got.get("predicted_depth", np.empty(0))
        if ref.shape != out.shape:
            self.failures.append(f"{case.label}: depth {list(out.shape)} vs torch {list(ref.shape)}")
            self.worst = float("inf")
            return
        for i, size in enumerate(case_sizes(case)):
            error = relative_error(_dense.depth_map(ref[i], size), _dense.depth_map(out[i], size))
            self.pictures, self.worst = self.pictures + 1, max(self.worst, error)
            if error > MAX_ERROR:
                self.failures.append(f"{case.label} picture {i}: relative error {error:.3g}")

    def check(self) -> Check:
        ok = not self.failures and self.pictures > 0
        return Check("depth agrees", ok, f"relative error {self.worst:.2g}", f"<= {MAX_ERROR:g} of the largest depth",
                     "; ".join(self.failures[:3]) or f"{self.pictures} pictures compared")


def postprocessing_check(stage: Path, cases: list[Case], references: list[dict[str, np.ndarray]]) -> Check:
    """The runtime's resize against ``post_process_depth_estimation`` on torch's depth."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(stage), backend="pil")
    worst, wrong, compared = 0.0, [], 0
    for case, ref in zip(cases, references):
        sizes = case_sizes(case)
        for i, (size, their) in enumerate(zip(sizes, transformers_depths(processor, ref["predicted_depth"], sizes))):
            mine = _dense.depth_map(ref["predicted_depth"][i], size)
            compared += 1
            error = relative_error(their, mine)
            worst = max(worst, error)
            if error > MAX_RESIZE_ERROR:
                shape = "" if mine.shape == their.shape else f" (map {list(mine.shape)} vs {list(their.shape)})"
                wrong.append(f"{case.label} picture {i}: relative error {error:.3g}{shape}")
    return Check("depth resize (numpy vs transformers)", not wrong and compared > 0, f"relative error {worst:.2g}",
                 f"same size, <= {MAX_RESIZE_ERROR:g} of the largest depth", "; ".join(wrong[:3]))


def transformers_depths(processor: Any, depth: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    from types import SimpleNamespace

    import torch

    outputs = SimpleNamespace(predicted_depth=torch.from_numpy(depth))
    found = processor.post_process_depth_estimation(outputs, target_sizes=sizes)
    return [item["predicted_depth"].numpy() for item in found]
