"""Segmentation training data: ADE20K-style folders, ``builtin:shapes``, batches, labels and mean IoU.

Masks follow ADE20K's convention, the one SegFormer's processor applies with
``do_reduce_labels``: a mask pixel of 0 is unlabelled, value k is class k - 1, and
255 is ignored too. Batches always go through the model's own image processor with
the reduction on, so data and model agree whatever the checkpoint's processor says.

    data/images/0001.jpg       data/annotations/0001.png      (one split: a validation share is held out)
    data/images/training/...   data/annotations/training/...  (ADEChallengeData2016's own splits)
    data/labels.txt            class names, one per line (class 0 first); optional

Every picture and mask is decoded once before training (same size, a class-index
mode, no class beyond the head) and again per batch, as the detection data is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.errors import DataError
from zoo.tasks._dense import PictureExamples, stacked_pixels

CLASSES = ("background", "circle", "square", "triangle")
SIDE = 64
TRAIN_IMAGES = 256
VALIDATION_IMAGES = 64
IGNORE = 255
LABELS_FILE = "labels.txt"
_SEEDS = {"train": 41000, "validation": 52000}
_ADE_SPLITS = {"training": "train", "validation": "validation"}
_MASK_MODES = ("L", "P", "I;16", "I")
_NAMES_KEY = "zoo_segmentation_labels"  # where a split's class names travel: its DatasetInfo description


# ---------------------------------------------------------------- builtin:shapes


def shapes() -> tuple[Any, str]:
    """(DatasetDict with train and validation splits, sha256 fingerprint): shapes on textures, a mask each."""
    import datasets

    digest = hashlib.sha256()
    splits = {}
    for split, count in (("train", TRAIN_IMAGES), ("validation", VALIDATION_IMAGES)):
        rows = [scene(_SEEDS[split] * 1000 + i) for i in range(count)]
        for image, mask in rows:
            digest.update(image.tobytes() + mask.tobytes())
        splits[split] = _table([r[0] for r in rows], [r[1] for r in rows], CLASSES)
    return datasets.DatasetDict(splits), digest.hexdigest()


def scene(seed: int) -> tuple[Image.Image, Image.Image]:
    """One SIDE x SIDE picture with one to three shapes, and its mask (background 1, shapes 2..4)."""
    from PIL import ImageDraw

    from zoo.tasks._shapes import _background, _class_colour, _draw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(_background(rng, SIDE, SIDE))
    mask = Image.new("L", (SIDE, SIDE), 1)
    pen, mask_pen = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(3))
        side = int(rng.integers(16, 33))
        x0, y0 = int(rng.integers(0, SIDE - side + 1)), int(rng.integers(0, SIDE - side + 1))
        name = CLASSES[kind + 1]
        _draw(pen, name, x0, y0, side, tuple(int(c) for c in _class_colour(rng, kind)))
        _draw(mask_pen, name, x0, y0, side, (kind + 2,))
    return image, mask


def _table(images: list[Any], masks: list[Any], names: tuple[str, ...] | None) -> Any:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    info = datasets.DatasetInfo(description=json.dumps({_NAMES_KEY: list(names)}) if names else "", features=features)
    return datasets.Dataset.from_dict({"image": images, "annotation": masks}, info=info, features=features)


# ---------------------------------------------------------------- ADE20K-style folders


def find_ade(data: str) -> Path | None:
    """The folder when ``data`` is one with ``images/`` and ``annotations/`` side by side, else None."""
    path = Path(data).expanduser()
    if path.is_dir() and (path / "images").is_dir() and (path / "annotations").is_dir():
        return path
    return None


def read_ade(root: Path) -> dict[str, Any]:
    """Its splits (``training``/``validation`` subfolders, or one ``train`` split), each a Dataset of files."""
    names = _read_names(root / LABELS_FILE)
    subfolders = {split: name for split, name in _ADE_SPLITS.items() if (root / "images" / split).is_dir()}
    if not subfolders:
        return {"train": _pairs(root / "images", root / "annotations", names)}
    return {name: _pairs(root / "images" / split, root / "annotations" / split, names)
            for split, name in subfolders.items()}


def _read_names(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"{path} names no class; write one class name per line (class 0 first) or remove it")
    return names


def _pairs(images: Path, annotations: Path, names: tuple[str, ...] | None) -> Any:
    """Every picture of ``images`` with the PNG mask of the same stem in ``annotations``."""
    import datasets

    opens = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    pictures = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in opens)
    if not pictures:
        raise DataError(f"{images} holds no pictures; an ADE20K-style folder has images/ and annotations/ "
                        "(PNG masks with the same file names)")
    masks = []
    for picture in pictures:
        mask = annotations / f"{picture.stem}.png"
        if not mask.is_file():
            raise DataError(f"picture {picture} has no mask {mask}; give every picture a PNG class-index mask "
                            "of the same name, or remove the picture")
        masks.append(str(mask))
    table = _table([str(p) for p in pictures], masks, names)
    return table.cast_column("image", datasets.Image()).cast_column("annotation", datasets.Image())


# ---------------------------------------------------------------- labels


def data_names(table: Any) -> tuple[str, ...] | None:
    """The class names a split carries (``labels.txt``, or the built-in set's), else None."""
    try:
        return tuple(json.loads(table.info.description or "{}").get(_NAMES_KEY) or ()) or None
    except (ValueError, AttributeError):
        return None


def plan_labels(table: Any, column: str, spec: Any, new_head: bool) -> Any:
    """The data's names (head kept when they are the model's), else the model's when every class fits in its
    head, else the classes' ids 0..max on a new head."""
    from zoo.data.labels import LabelPlan

    names = data_names(table)
    if names is not None:
        keep = bool(spec.labels) and tuple(spec.labels) == names and not new_head
        return LabelPlan(names, new_head=not keep, source="model" if keep else "classlabel", distinct=len(names))
    top = max((_mask_classes(table, column, row).max(initial=-1) for row in range(len(table))), default=-1)
    if top < 0:
        raise DataError(f"every mask of column '{column}' is unlabelled (only 0 and 255); masks hold class k as "
                        "pixel value k + 1 (ADE20K's convention)")
    if spec.labels and not new_head and top < len(spec.labels):
        return LabelPlan(tuple(spec.labels), new_head=False, source="model", distinct=int(top) + 1)
    return LabelPlan(tuple(str(i) for i in range(int(top) + 1)), new_head=True, source="ids", distinct=int(top) + 1)


def _mask_classes(table: Any, column: str, row: int) -> np.ndarray:
    """The classes (after the reduction) one mask holds."""
    values = np.unique(_mask_array(table[row][column], f"row {row}")).astype(np.int64)
    return values[(values != 0) & (values != IGNORE)] - 1


def _mask_array(mask: Any, where: str) -> np.ndarray:
    if not isinstance(mask, Image.Image) or mask.mode not in _MASK_MODES:
        mode = getattr(mask, "mode", type(mask).__name__)
        raise DataError(f"{where}: the mask is {mode}; a mask is a class-index picture (PNG in mode L or P, "
                        "pixel value k + 1 for class k, 0 unlabelled)")
    array = np.asarray(mask)
    if array.max(initial=0) > IGNORE:
        raise DataError(f"{where}: mask value {int(array.max())}; class indices go up to 254 (255 is ignored)")
    return array.astype(np.uint8)  # a writable copy: the processor's reduction edits it in place


# ---------------------------------------------------------------- batches


class SegmentationExamples(PictureExamples):
    """Indexable training rows; ``batch`` returns pixel_values and the reduced class masks (``labels``)."""

    @classmethod
    def checked(cls, table: Any, columns: dict[str, str], classes: int, processor: Any,
                what: str) -> SegmentationExamples:
        """Every row decoded once: picture and mask of one size, no class beyond the ``classes`` of the head."""
        from zoo.tasks._detection_preprocess import check_size

        for row in range(len(table)):
            where = f"{what} row {row}"
            try:
                record = table[row]
                image, mask = record[columns["input"]], record[columns["label"]]
            except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for damaged files
                raise DataError(f"{where}: a picture or mask cannot be decoded ({exc}); replace or remove it") from exc
            check_size(image, where)
            if image.size != getattr(mask, "size", None):
                raise DataError(f"{where}: picture {image.size[0]}x{image.size[1]} but mask "
                                f"{getattr(mask, 'size', ('?', '?'))[0]}x{getattr(mask, 'size', ('?', '?'))[1]}; a "
                                "mask covers its picture pixel for pixel")
            found = _mask_classes(table, columns["label"], row)
            if found.size and found.max() >= classes:
                raise DataError(f"{where}: mask value {int(found.max()) + 1} is class {int(found.max())}, beyond the "
                                f"{classes} classes being trained; fix the mask or add the class to {LABELS_FILE}")
        return cls(table, columns, processor)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        from zoo.tasks._detection_preprocess import to_rgb

        rows = [self.table[i] for i in indices]
        images = [to_rgb(r[self.columns["input"]]) for r in rows]
        masks = [_mask_array(r[self.columns["label"]], f"row {i}") for i, r in zip(indices, rows)]
        encoded = self.processor(images=images, segmentation_maps=masks, do_reduce_labels=True, return_tensors=None)
        pixels = stacked_pixels(encoded["pixel_values"])
        labels = [np.asarray(m) for m in encoded["labels"]]
        return {"pixel_values": torch.from_numpy(pixels), "labels": torch.from_numpy(np.stack(labels).astype(np.int64))}


# ---------------------------------------------------------------- mean IoU


def areas(predicted: np.ndarray, truth: np.ndarray, classes: int) -> list[int]:
    """One picture's record: per class, the pixels of intersection, of prediction and of truth (255 left out)."""
    keep = truth != IGNORE
    predicted, truth = predicted[keep], truth[keep]
    intersect = np.bincount(truth[predicted == truth], minlength=classes)[:classes]
    return [*intersect.tolist(), *np.bincount(predicted, minlength=classes)[:classes].tolist(),
            *np.bincount(truth, minlength=classes)[:classes].tolist()]


def mean_iou(records: list[list[int]], classes: int) -> dict[str, float]:
    """Mean IoU over the classes present in prediction or truth, and pixel accuracy, from every picture's areas.

    The definition of the ``evaluate`` library's mean_iou (areas summed over the data set,
    classes with no pixel on either side left out of the mean); ``evaluate.load`` fetches its
    metric scripts from the hub, which zoo must not need, so the sums are taken here.
    """
    if not records:
        return {"val_mean_iou": 0.0, "val_accuracy": 0.0}
    total = np.asarray(records, dtype=np.int64).sum(axis=0).reshape(3, classes)
    intersect, predicted, truth = total
    union = predicted + truth - intersect
    present = union > 0
    iou = float((intersect[present] / union[present]).mean()) if present.any() else 0.0
    return {"val_mean_iou": iou, "val_accuracy": float(intersect.sum() / max(int(truth.sum()), 1))}
