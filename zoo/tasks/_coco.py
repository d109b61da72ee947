"""COCO detection data in and COCO mAP out.

Reading: ``--data FOLDER`` where FOLDER holds ``instances.json`` and the pictures
(in ``images/`` or beside the file), or ``train/`` and ``validation/`` (or ``val/``)
folders laid out that way, or ``--data path/to/instances.json``. Each split
becomes an HF ``Dataset`` in the object-detection layout transformers' own
examples use (``image`` + ``objects: {bbox, category}``), so COCO folders, hub
data sets and ``builtin:shapes`` flow through one encoder.

What the file says is checked before any training starts, each problem as one
line naming the annotation and the picture: unknown category or image ids, boxes
that are not four finite numbers with positive width and height, boxes lying
wholly outside their picture, duplicate image ids, missing picture files. Boxes
that merely stick out of their picture are clipped to it (as transformers and
DETR's own COCO reader do). An image without annotations is a valid example with
nothing to find.

Scoring: ``coco_map`` runs pycocotools' COCOeval on gathered validation records
and returns mAP@[.5:.95] and mAP@.5.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

from zoo.errors import DataError

ANNOTATIONS = "instances.json"
_SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid")}


def find_coco(data: str) -> dict[str, Path] | None:
    """{split: instances.json} of a COCO layout at ``data``, or None when it is not one."""
    path = Path(data).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return {"train": path} if _is_coco_file(path) else None
    if not path.is_dir():
        return None
    if (path / ANNOTATIONS).is_file():
        return {"train": path / ANNOTATIONS}
    found = {}
    for split, names in _SPLIT_FOLDERS.items():
        for name in names:
            if (path / name / ANNOTATIONS).is_file():
                found[split] = path / name / ANNOTATIONS
                break
    return found if "train" in found else None


def _is_coco_file(path: Path) -> bool:
    try:
        head = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and "annotations" in head and "images" in head


def read_coco_splits(files: dict[str, Path]) -> dict[str, Any]:
    """Every split of a COCO layout as a ``datasets.Dataset``; all splits share the training categories."""
    train = _load_json(files["train"])
    categories = _categories(train, files["train"])
    return {split: _to_dataset(train if split == "train" else _load_json(path), path, categories)
            for split, path in files.items()}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); a COCO file is one JSON object") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise DataError(f"{path}: '{key}' is missing or not a list; a COCO detection file has images, "
                            "annotations and categories lists")
    return data


def _categories(data: dict[str, Any], path: Path) -> dict[int, str]:
    """COCO category id -> name, in id order (their indices become the model's class indices)."""
    found: dict[int, str] = {}
    for entry in data["categories"]:
        cid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(entry.get("name"), str):
            raise DataError(f"{path}: category {entry!r} needs an integer 'id' and a string 'name'")
        if cid in found:
            raise DataError(f"{path}: category id {cid} appears twice ('{found[cid]}', '{entry['name']}')")
        found[cid] = entry["name"]
    if not found:
        raise DataError(f"{path}: 'categories' is empty; name at least one category to detect")
    return dict(sorted(found.items()))


def _to_dataset(data: dict[str, Any], path: Path, categories: dict[int, str]) -> Any:
    import datasets

    folder = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    images = _images(data, path, folder)
    objects: dict[int, dict[str, list[Any]]] = {iid: {"bbox": [], "category": []} for iid in images}
    index = {cid: i for i, cid in enumerate(categories)}
    for ann in data["annotations"]:
        iid, box, cid = _annotation(ann, path, images, categories)
        objects[iid]["bbox"].append(box)
        objects[iid]["category"].append(index[cid])
    rows = {"image": [str(images[i]["file"]) for i in images], "image_id": list(images),
            "width": [images[i]["width"] for i in images], "height": [images[i]["height"] for i in images],
            "objects": [objects[i] for i in images]}
    features = datasets.Features({
        "image": datasets.Image(), "image_id": datasets.Value("int64"),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=list(categories.values())))},
    })
    return datasets.Dataset.from_dict(rows, features=features)


def _images(data: dict[str, Any], path: Path, folder: Path) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for entry in data["images"]:
        iid = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(name, str):
            raise DataError(f"{path}: image {entry!r} needs an integer 'id' and a string 'file_name'")
        if iid in images:
            raise DataError(f"{path}: image id {iid} appears twice ('{images[iid]['file'].name}', '{name}')")
        file = (folder / name).resolve()
        if not file.is_file() or folder.resolve() not in file.parents:
            raise DataError(f"{path}: image {iid} names '{name}', which is not a file under {folder}; put the "
                            "pictures in images/ beside instances.json")
        width, height = entry.get("width"), entry.get("height")
        images[iid] = {"file": file, "width": width if isinstance(width, int) else -1,
                       "height": height if isinstance(height, int) else -1}
    if not images:
        raise DataError(f"{path}: 'images' is empty; a COCO file lists the pictures it annotates")
    return images


def _annotation(ann: Any, path: Path, images: dict[int, dict[str, Any]],
                categories: dict[int, str]) -> tuple[int, list[float], int]:
    """(image id, box, category id) of one annotation, checked."""
    if not isinstance(ann, dict):
        raise DataError(f"{path}: annotation {ann!r} is not an object")
    name = f"{path.name}: annotation {ann.get('id', '?')}"
    iid, cid, box = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
    if iid not in images:
        raise DataError(f"{name} refers to image_id {iid!r}, which 'images' does not list")
    where = f"{name} (image '{images[iid]['file'].name}')"
    if cid not in categories:
        valid = ", ".join(f"{k} ({v})" for k, v in categories.items())
        raise DataError(f"{where} has category_id {cid!r}; the categories are {valid}: fix the id or add the category")
    box = check_box(box, images[iid]["width"], images[iid]["height"], where)
    return iid, box, cid


def check_box(box: Any, width: int, height: int, where: str) -> list[float]:
    """A COCO [x, y, w, h] box, clipped to a width x height picture (sizes < 0: unknown, not clipped)."""
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise DataError(f"{where}: bbox {box!r} is not four finite numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox {list(box)} has width {w:g} and height {h:g}; both must be positive")
    if width < 0 or height < 0:
        return [x, y, w, h]
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: bbox {list(box)} lies wholly outside the {width}x{height} picture; COCO boxes "
                        "are [x, y, width, height] in pixels")
    return [x0, y0, x1 - x0, y1 - y0]


# ---------------------------------------------------------------- mAP


def coco_map(records: list[dict[str, Any]], labels: tuple[str, ...]) -> dict[str, float]:
    """mAP@[.5:.95] and mAP@.5 of validation records, by pycocotools' COCOeval (0.0 when undefined)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, truths, found = [], [], []
    for iid, record in enumerate(records):
        height, width = record["size"]
        images.append({"id": iid, "height": height, "width": width})
        for box, label in zip(record["gt_boxes"], record["gt_labels"]):
            truths.append({"id": len(truths) + 1, "image_id": iid, "bbox": box, "category_id": label + 1,
                           "area": box[2] * box[3], "iscrowd": 0})
        found += [{"image_id": iid, "bbox": box, "score": score, "category_id": label + 1}
                  for box, score, label in zip(record["boxes"], record["scores"], record["labels"])]
    if not truths or not found:
        return {"val_map": 0.0, "val_map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": truths,
                         "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(found), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"val_map": max(float(evaluation.stats[0]), 0.0), "val_map50": max(float(evaluation.stats[1]), 0.0)}
