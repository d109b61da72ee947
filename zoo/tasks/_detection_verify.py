"""How a detection export is checked: the picture grid, torch/onnxruntime agreement, and the parity checks.

Grid: per seed, one picture alone and three pictures of different sizes and
aspect ratios in one padded batch, all made by the model's own transformers
image processor from generated scenes (``_shapes``), so that padding, the
``pixel_mask`` and dynamic height/width are exercised at sizes the export
never traced.

Agreement (torch vs onnxruntime): detections are matched by identity (the query,
and for sigmoid heads the class), never by rank, so near-ties cannot reorder
them. For every detection either side scores above the threshold, plus the five
best of each picture (a random-initialised detector scores nothing near 0.5,
and an empty comparison would prove nothing): the score must agree within the
tolerances, the label must agree (a different label is excused only when torch's
own scores for the two labels tie within tolerance), and the boxes must overlap
with IoU >= 0.99 (boxes narrower than a pixel are compared corner by corner
instead, within 1e-3 of the picture size).

Parity (export time, torch-free code against transformers on the same data):
the runtime's preprocessing against the processor's arrays, and the numpy
decoding against ``image_processor.post_process_object_detection`` at the
artifact's threshold, below every score (the whole ranked list), and between
each case's middle scores where they are apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.checks import Check
from zoo.errors import ArtifactError
from zoo.spec import Tolerances
from zoo.tasks._detection_postprocess import Decoding, _candidates, box_iou, center_to_corners, class_scores, decode
from zoo.tasks.base import Case

MIN_IOU = 0.99
COMPARE_TOP = 5
BOX_TOLERANCE = 1e-3  # of the picture's longer side, as the issue states for box parity
EVERY_CANDIDATE = -1.0  # a threshold below every score: the whole ranked list must agree
MIN_GAP = 1e-5  # far above the float32 noise (~1e-7) between numpy's and torch's scores
_GRID_SIZES = (((90, 120),), ((150, 100), (100, 100), (80, 140)))  # (height, width) per picture of a case


# ---------------------------------------------------------------- the grid


def scenes(seed: int, sizes: tuple[tuple[int, int], ...]) -> list[Image.Image]:
    """Generated pictures of the given sizes (shapes on textured backgrounds, stretched to size)."""
    from zoo.tasks._shapes import scene

    return [scene(seed * 101 + i)[0].resize((w, h), Image.Resampling.BILINEAR) for i, (h, w) in enumerate(sizes)]


def processor_inputs(processor: Any, images: list[Image.Image], names: list[str]) -> dict[str, np.ndarray]:
    """The spec's inputs, in its order, as the model's own image processor makes them."""
    encoded = processor(images=images, return_tensors="np")
    return {name: np.ascontiguousarray(encoded[name]).astype(np.int64 if name == "pixel_mask" else np.float32)
            for name in names}


def grid(processor: Any, names: list[str], seeds: tuple[int, ...]) -> list[Case]:
    cases = []
    for seed in seeds:
        for kind, sizes in zip(("one picture", "mixed sizes"), _GRID_SIZES):
            # rotate the sizes per seed so each seed pads differently
            sizes = sizes[seed % len(sizes):] + sizes[:seed % len(sizes)]
            images = scenes(seed, sizes)
            cases.append(Case(kind, seed, processor_inputs(processor, images, names), raw=images))
    return cases


def case_sizes(case: Case) -> list[tuple[int, int]]:
    """Each picture's original (height, width); the padded input size when the case kept no pictures."""
    if case.raw:
        return [(image.height, image.width) for image in case.raw]
    pixels = next(iter(case.inputs.values()))
    return [(int(pixels.shape[-2]), int(pixels.shape[-1]))] * int(pixels.shape[0])


# ---------------------------------------------------------------- torch vs onnxruntime


class DetectionAgreement:
    """Same detections, boxes overlapping with IoU >= 0.99, scores within tolerance, over the grid."""

    def __init__(self, decoding: Decoding, tol: Tolerances):
        self.decoding, self.tol = decoding, tol
        self.compared = self.broken = 0
        self.min_iou, self.max_score_diff = 1.0, 0.0
        self.failures: list[str] = []

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref_logits, ref_boxes = reference["logits"], reference["pred_boxes"]
        got_logits, got_boxes = got.get("logits", np.empty(0)), got.get("pred_boxes", np.empty(0))
        if ref_logits.shape != got_logits.shape or ref_boxes.shape != got_boxes.shape:
            self.broken += 1
            return
        ref_scores, got_scores = class_scores(ref_logits, self.decoding), class_scores(got_logits, self.decoding)
        for i, (height, width) in enumerate(case_sizes(case)):
            scale = np.asarray([width, height, width, height], dtype=np.float64)
            boxes = (center_to_corners(ref_boxes[i].astype(np.float64)) * scale,
                     center_to_corners(got_boxes[i].astype(np.float64)) * scale)
            for query, label in self._pairs(ref_scores[i], got_scores[i]):
                self._compare(ref_scores[i], got_scores[i], boxes, query, label, max(height, width),
                              f"{case.label} picture {i} query {query}")

    def _pairs(self, ref: np.ndarray, got: np.ndarray) -> list[tuple[int, int]]:
        """(query, class) of every detection either side keeps above the threshold or among its best five."""
        pairs: set[tuple[int, int]] = set()
        for scores in (ref, got):
            best, labels, queries = _candidates(scores, self.decoding)
            top = np.argsort(-best, kind="stable")[:COMPARE_TOP]
            chosen = set(np.flatnonzero(best > self.decoding.threshold)) | set(top.tolist())
            # a softmax head's detection is its query: compare it under torch's own label
            pairs |= {(int(queries[j]), int(ref[queries[j]].argmax() if self.decoding.scores == "softmax"
                                          else labels[j])) for j in chosen}
        return sorted(pairs)

    def _compare(self, ref: np.ndarray, got: np.ndarray, boxes: tuple[np.ndarray, np.ndarray], query: int,
                 label: int, side: int, where: str) -> None:
        self.compared += 1
        tol = self.tol.atol + self.tol.rtol * abs(float(ref[query, label]))
        diff = abs(float(got[query, label]) - float(ref[query, label]))
        self.max_score_diff = max(self.max_score_diff, diff)
        problems = [f"score {got[query, label]:.6f} vs torch {ref[query, label]:.6f}"] if diff > tol else []
        if self.decoding.scores == "softmax":
            other = int(got[query].argmax())
            if other != label and ref[query, label] - ref[query, other] > tol:
                problems.append(f"label {other} vs torch {label}")
        iou = float(box_iou(boxes[0][None, query], boxes[1][None, query])[0])
        tiny = min(boxes[0][query, 2] - boxes[0][query, 0], boxes[0][query, 3] - boxes[0][query, 1]) < 1.0
        if tiny:  # IoU of sub-pixel boxes swings on rounding; their corners must still agree
            corners_ok = np.abs(boxes[0][query] - boxes[1][query]).max() <= BOX_TOLERANCE * side
            iou = 1.0 if corners_ok else 0.0
        self.min_iou = min(self.min_iou, iou)
        if iou < MIN_IOU:
            problems.append(f"box IoU {iou:.4f}")
        if problems:
            self.failures.append(f"{where}: {', '.join(problems)}")

    def check(self) -> Check:
        ok = not self.failures and not self.broken and self.compared > 0
        detail = f"{self.compared} detections compared (above {self.decoding.threshold:g} or top {COMPARE_TOP})"
        if self.broken:
            detail += f"; {self.broken} cases of the wrong shape"
        if self.failures:
            detail = f"{len(self.failures)} disagree: " + "; ".join(self.failures[:3])
        return Check("detections agree", ok, f"min IoU {self.min_iou:.4f}, max score diff {self.max_score_diff:.2g}",
                     f"IoU >= {MIN_IOU}, |score| <= {self.tol.atol:g} + {self.tol.rtol:g}*score, same labels",
                     detail)


# ---------------------------------------------------------------- parity of the torch-free code


def preprocessing_check(stage: Path, input_names: list[str], cases: list[Case]) -> Check:
    """The runtime's Pillow/numpy preprocessing, from the artifact's files, against the processor's arrays."""
    from zoo.tasks._detection_preprocess import DetectionPreprocessor, ImageSteps

    try:
        runtime = DetectionPreprocessor(ImageSteps.from_folder(stage), input_names)
    except (ArtifactError, OSError, ValueError) as exc:  # an unreadable config fails this check, in its line
        return Check("runtime preprocessing", False, "unreadable", "", str(exc)[:300])
    worst, wrong = 0.0, []
    for case in cases:
        arrays = runtime.batch(case.raw).arrays
        for name, expected in case.inputs.items():
            got = arrays.get(name, np.empty(0))
            if got.shape != expected.shape:
                wrong.append(f"{case.label} {name} shape {list(got.shape)} != {list(expected.shape)}")
                continue
            diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0))
            worst = max(worst, diff)
            if diff > 1e-4:
                wrong.append(f"{case.label} {name} max diff {diff:.3g}")
    return Check("runtime preprocessing", not wrong and bool(cases), f"max diff {worst:.2g}",
                 "<= 1e-4 of the image processor's arrays", "; ".join(wrong[:3]))


def postprocessing_check(stage: Path, decoding: Decoding, cases: list[Case],
                         references: list[dict[str, np.ndarray]]) -> Check:
    """The runtime's numpy decoding against ``post_process_object_detection`` on torch's outputs."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(stage), backend="pil")
    compared, wrong = 0, []
    for case, ref in zip(cases, references):
        sizes = case_sizes(case)
        candidates = decode(ref["logits"], ref["pred_boxes"], sizes, decoding, threshold=None)
        thresholds = {EVERY_CANDIDATE, decoding.threshold}
        middle = middle_threshold(np.concatenate([c.scores for c in candidates]))
        if middle is not None:
            thresholds.add(middle)
        for threshold in sorted(thresholds):
            ours = decode(ref["logits"], ref["pred_boxes"], sizes, decoding, threshold)
            theirs = _transformers_detections(processor, ref, sizes, threshold)
            for i, (mine, their) in enumerate(zip(ours, theirs)):
                compared += len(their["scores"])
                problem = _differs(mine, their, max(sizes[i]))
                if problem:
                    wrong.append(f"{case.label} picture {i} threshold {threshold:.4g}: {problem}")
    return Check("box decoding (numpy vs transformers)", not wrong and compared > 0, f"{compared} detections",
                 "same labels and order, boxes within 1e-3 of the picture size", "; ".join(wrong[:3]))


def middle_threshold(scores: np.ndarray) -> float | None:
    """A threshold in the widest gap between the middle half of the distinct scores, or None.

    About half the detections pass, and none sits near the threshold, where one ulp
    between numpy's and torch's softmax would decide it. None when even the widest gap
    is below MIN_GAP: a random or barely trained detector can score every query within
    1e-6 of the others, and no threshold among them means anything.
    """
    ordered = np.unique(scores.astype(np.float64))
    if len(ordered) < 2:
        return None
    low, high = max(1, len(ordered) // 4), max(2, (3 * len(ordered)) // 4 + 1)
    gaps = np.diff(ordered)[low - 1:high - 1]
    widest = low - 1 + int(np.argmax(gaps))
    if gaps.max() < MIN_GAP:
        return None
    return float((ordered[widest] + ordered[widest + 1]) / 2)


def _transformers_detections(processor: Any, ref: dict[str, np.ndarray], sizes: list[tuple[int, int]],
                             threshold: float) -> list[dict[str, np.ndarray]]:
    from types import SimpleNamespace

    import torch

    outputs = SimpleNamespace(logits=torch.from_numpy(ref["logits"]), pred_boxes=torch.from_numpy(ref["pred_boxes"]))
    found = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    return [{k: v.detach().cpu().numpy() for k, v in item.items()} for item in found]


def _differs(mine: Any, theirs: dict[str, np.ndarray], side: int) -> str:
    if len(mine.scores) != len(theirs["scores"]):
        return f"{len(mine.scores)} detections vs {len(theirs['scores'])}"
    if not np.array_equal(mine.labels, theirs["labels"]):
        return f"labels {mine.labels[:5].tolist()} vs {theirs['labels'][:5].tolist()}"
    if len(mine.scores) and np.abs(mine.scores - theirs["scores"]).max() > 1e-5:
        return f"scores differ by {np.abs(mine.scores - theirs['scores']).max():.3g}"
    if len(mine.boxes) and np.abs(mine.boxes - theirs["boxes"]).max() > BOX_TOLERANCE * side:
        return f"boxes differ by {np.abs(mine.boxes - theirs['boxes']).max():.3g} px"
    return ""
