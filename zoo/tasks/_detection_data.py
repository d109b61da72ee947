"""Detection training data: rows of (image, COCO boxes, categories) checked once, batched by the image processor.

Every row is checked before training starts (the picture decodes, is large
enough, its boxes are sane and its categories known); pictures are decoded again
per batch rather than kept in memory (a COCO set of 800-pixel photos would not
fit). Each batch goes through the model's own transformers image processor
(resize, normalise, pad to the batch's largest picture, ``pixel_mask``; boxes to
normalised centre format), exactly what the model sees at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoo.errors import DataError, InputError, first_line
from zoo.tasks._coco import check_box


@dataclass(frozen=True)
class Target:
    """One picture's ground truth: COCO boxes in its own pixels and class indices."""

    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    size: tuple[int, int]  # (height, width)


class DetectionExamples:
    """Indexable training rows; ``batch`` returns model inputs, ``labels`` for the loss and the truth for mAP."""

    def __init__(self, table: Any, image_column: str, targets: list[Target], processor: Any, input_names: list[str]):
        self.table = table
        self.image_column = image_column
        self.targets = targets
        self.processor = processor
        self.input_names = input_names

    def __len__(self) -> int:
        return len(self.targets)

    def target_count(self, indices: list[int]) -> int:
        # the model's loss is a per-batch mean; the loop weighs each picture equally
        return len(indices)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        from zoo.tasks._detection_preprocess import to_rgb

        images = [to_rgb(self.table[i][self.image_column]) for i in indices]
        targets = [self.targets[i] for i in indices]
        annotations = [{"image_id": i, "annotations": [
            {"bbox": list(box), "category_id": label, "area": box[2] * box[3], "iscrowd": 0}
            for box, label in zip(t.boxes, t.labels)]} for i, t in zip(indices, targets)]
        # No padding by the processor: it would re-express each box relative to the padded canvas,
        # while post-processing (transformers' and ours) scales boxes by the picture's own size,
        # as DETR was trained (boxes relative to the real pixels; the mask hides the padding).
        encoded = self.processor(images=images, annotations=annotations, do_pad=False, return_tensors=None)
        out: dict[str, Any] = pad_batch([np.asarray(p) for p in encoded["pixel_values"]], self.input_names,
                                        getattr(self.processor, "pad_size", None))
        out["labels"] = [{"class_labels": torch.as_tensor(np.asarray(lab["class_labels"]), dtype=torch.long),
                          "boxes": torch.as_tensor(np.asarray(lab["boxes"]), dtype=torch.float32).reshape(-1, 4)}
                         for lab in encoded["labels"]]
        out["targets"] = targets
        return out


def pad_batch(pixels: list[np.ndarray], input_names: list[str], pad_size: Any) -> dict[str, torch.Tensor]:
    """(C, h, w) arrays zero-padded at the bottom and right to the batch's largest (or the processor's pad_size)."""
    if pad_size:
        height, width = int(pad_size["height"]), int(pad_size["width"])
    else:
        height, width = max(p.shape[1] for p in pixels), max(p.shape[2] for p in pixels)
    batch = torch.zeros((len(pixels), pixels[0].shape[0], height, width), dtype=torch.float32)
    mask = torch.zeros((len(pixels), height, width), dtype=torch.long)
    for i, p in enumerate(pixels):
        batch[i, :, : p.shape[1], : p.shape[2]] = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
        mask[i, : p.shape[1], : p.shape[2]] = 1
    arrays = {"pixel_values": batch, "pixel_mask": mask}
    return {name: arrays[name] for name in input_names}


def read_targets(table: Any, columns: dict[str, str], labels: tuple[str, ...], what: str) -> list[Target]:
    """Every row's target, checked; one DataError line for the first bad row."""
    from zoo.tasks._detection_preprocess import check_size, to_rgb

    names = category_names(table, columns["label"])
    lookup = {name: i for i, name in enumerate(labels)}
    targets = []
    for row in range(len(table)):
        where = f"{what} row {row}"
        record, image = _decoded_row(table, row, columns["input"], where)
        try:
            check_size(image, where)
        except InputError as exc:
            raise DataError(f"{exc}; remove it from the data") from None
        width, height = to_rgb(image).size
        objects = record[columns["label"]] or {}
        boxes, cats = objects.get("bbox") or [], objects.get("category") or []
        if len(boxes) != len(cats):
            raise DataError(f"{where}: {len(boxes)} boxes but {len(cats)} categories; every box needs one")
        checked = [tuple(check_box(b, width, height, f"{where} box {k}")) for k, b in enumerate(boxes)]
        indices = [_class_index(c, names, lookup, f"{where} box {k}") for k, c in enumerate(cats)]
        targets.append(Target(tuple(checked), tuple(indices), (height, width)))
    return targets


def _decoded_row(table: Any, row: int, column: str, where: str) -> tuple[dict[str, Any], Any]:
    """The row and its fully decoded picture (a damaged file fails here, not in the middle of training)."""
    try:
        record = table[row]
        record[column].load()
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for damaged pictures
        raise DataError(f"{where} ({_file_of(table, row, column)}): the picture cannot be decoded "
                        f"({first_line(exc)}); replace or remove it") from exc
    return record, record[column]


def _file_of(table: Any, row: int, column: str) -> str:
    import datasets

    raw = table.cast_column(column, datasets.Image(decode=False))[row][column]
    return str(raw.get("path") or "an embedded picture")


def category_names(table: Any, column: str) -> list[str] | None:
    """Class names of an ``objects.category`` ClassLabel, else None (categories are then names or numbers)."""
    import datasets

    feature = table.features[column]
    inner = feature.get("category") if isinstance(feature, dict) else None
    if isinstance(feature, datasets.Sequence) and isinstance(feature.feature, dict):
        inner = feature.feature.get("category")
    inner = getattr(inner, "feature", inner)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _class_index(value: Any, names: list[str] | None, lookup: dict[str, int], where: str) -> int:
    name = names[value] if names is not None and isinstance(value, int) and 0 <= value < len(names) else str(value)
    if name not in lookup:
        raise DataError(f"{where}: category '{name}' is not among the training categories "
                        f"({', '.join(lookup)}); fix the category or add it to the training data")
    return lookup[name]


def category_labels(table: Any, column: str) -> tuple[str, ...]:
    """The category names a split uses: a ClassLabel's names, else the distinct values, sorted."""
    names = category_names(table, column)
    if names is not None:
        return tuple(names)
    values = {c for row in table[column] for c in (row or {}).get("category") or []}
    return tuple(str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v)))


def move_labels(labels: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in label.items()} for label in labels]
