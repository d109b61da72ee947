"""Raw detector outputs to detections, in numpy: what ``post_process_object_detection`` returns, no torch.

Two decodings cover the transformers detectors zoo exports:

- ``softmax`` (DETR, YOLOS): each query's class scores are a softmax whose last
  column is "no object"; a query's detection is its best real class, and
  detections keep query order.
- ``sigmoid`` (RT-DETR): every (query, class) pair is scored with a sigmoid
  (the focal-loss heads); the ``top_k`` best pairs over all queries and classes
  are kept, best first, and a query may appear once per class.

Boxes arrive as (centre x, centre y, width, height) relative to the image and
leave as (x min, y min, x max, y max) in pixels of each ORIGINAL image. Scores
strictly above the threshold are kept, as transformers keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import ArtifactError

SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Decoding:
    """How one detector family turns logits into scores (recorded in the artifact's manifest)."""

    scores: str  # softmax | sigmoid
    top_k: int | None = None  # sigmoid: pairs kept before the threshold (transformers: the number of queries)
    box_format: str = "cxcywh"  # relative centre/size, the only format the supported heads emit
    threshold: float = 0.5  # predict's default; transformers' default too

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "top_k": self.top_k, "box_format": self.box_format,
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, record: Any, where: str = "manifest.json") -> Decoding:
        """Parse an untrusted record; one ArtifactError naming the field otherwise."""
        if not isinstance(record, dict):
            raise ArtifactError(f"{where}: preprocess.detection is missing or not an object; re-export the artifact")
        scores, top_k = record.get("scores"), record.get("top_k")
        threshold, box_format = record.get("threshold", 0.5), record.get("box_format", "cxcywh")
        problems = []
        if scores not in SCORINGS:
            problems.append(f"scores={scores!r} (valid: {', '.join(SCORINGS)})")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            problems.append(f"top_k={top_k!r} (a positive integer or null)")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            problems.append(f"threshold={threshold!r} (a number in [0, 1])")
        if box_format != "cxcywh":
            problems.append(f"box_format={box_format!r} (valid: cxcywh)")
        if problems:
            raise ArtifactError(f"{where}: preprocess.detection has " + "; ".join(problems) + "; re-export the artifact")
        return cls(scores=scores, top_k=top_k, box_format=box_format, threshold=float(threshold))


@dataclass(frozen=True)
class ImageDetections:
    """One image's decoded detections, in transformers' order; ``queries`` says which query made each."""

    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64, class indices
    boxes: np.ndarray  # (n, 4) float32, xyxy pixels of the original image
    queries: np.ndarray  # (n,) int64


def sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so that neither branch overflows in exp
    out = np.empty_like(x, dtype=np.float32)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def center_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), same units."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def class_scores(logits: np.ndarray, decoding: Decoding) -> np.ndarray:
    """Per (query, class) scores of real classes: softmax without the no-object column, or sigmoid."""
    logits = logits.astype(np.float32)
    if decoding.scores == "softmax":
        return softmax(logits)[..., :-1]
    return sigmoid(logits)


def decode(logits: np.ndarray, pred_boxes: np.ndarray, sizes: list[tuple[int, int]], decoding: Decoding,
           threshold: float | None) -> list[ImageDetections]:
    """Per image: detections scoring strictly above ``threshold`` (None keeps every candidate).

    ``sizes`` holds each original image's (height, width); boxes are scaled to it.
    """
    if logits.shape[0] != len(sizes) or pred_boxes.shape[:2] != logits.shape[:2]:
        raise ArtifactError(f"the detector returned logits {list(logits.shape)} and boxes {list(pred_boxes.shape)} "
                            f"for {len(sizes)} images; the graph does not match this artifact's task")
    scores = class_scores(logits, decoding)
    corners = center_to_corners(pred_boxes.astype(np.float32))
    results = []
    for row, (height, width) in enumerate(sizes):
        scale = np.asarray([width, height, width, height], dtype=np.float32)
        best, labels, queries = _candidates(scores[row], decoding)
        keep = np.ones(best.shape, dtype=bool) if threshold is None else best > threshold
        results.append(ImageDetections(scores=best[keep].astype(np.float32), labels=labels[keep].astype(np.int64),
                                       boxes=(corners[row][queries[keep]] * scale).astype(np.float32),
                                       queries=queries[keep].astype(np.int64)))
    return results


def _candidates(scores: np.ndarray, decoding: Decoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, class, query) of every candidate detection of one image, in transformers' order."""
    queries, classes = scores.shape
    if decoding.scores == "softmax":
        labels = scores.argmax(-1)
        return scores[np.arange(queries), labels], labels, np.arange(queries)
    flat = scores.reshape(-1)
    k = min(decoding.top_k or queries, flat.size)
    order = np.argsort(-flat, kind="stable")[:k]
    return flat[order], order % classes, order // classes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two (n, 4) xyxy arrays."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
