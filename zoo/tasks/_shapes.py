"""``builtin:shapes``: an offline object-detection data set, generated the same way on every machine.

    zoo finetune ./detr-small --data builtin:shapes

Each picture is a textured background (noise, stripes or a gradient, in a few
sizes and aspect ratios) with zero to three coloured shapes: circle, square,
triangle. Boxes are COCO ``[x, y, width, height]`` in pixels, tight around the
drawn shape; about one picture in eight holds no shape at all (a valid training
example: nothing to find). Everything comes from one seeded numpy generator and
Pillow's deterministic drawing, so the fingerprint never changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
SIZES = ((64, 64), (64, 96), (96, 64), (80, 80), (72, 96))  # (height, width)
TRAIN_IMAGES = 480
VALIDATION_IMAGES = 96
_SEEDS = {"train": 20240, "validation": 31337}
_EMPTY_SHARE = 0.125
_MIN_SIDE, _MAX_SIDE = 18, 36
_MAX_OBJECTS = 3


def shapes() -> tuple[Any, str]:
    """(DatasetDict with train and validation splits, sha256 fingerprint) in the HF object-detection layout."""
    import datasets

    digest = hashlib.sha256()
    splits = {}
    for split, count in (("train", TRAIN_IMAGES), ("validation", VALIDATION_IMAGES)):
        rows = [scene(_SEEDS[split] * 1000 + i) for i in range(count)]
        for image, boxes, labels in rows:
            digest.update(image.tobytes())
            digest.update(np.asarray(boxes, dtype=np.float64).tobytes() + np.asarray(labels, dtype=np.int64).tobytes())
        splits[split] = datasets.Dataset.from_dict(_columns(rows), features=features())
    return datasets.DatasetDict(splits), digest.hexdigest()


def features() -> Any:
    import datasets

    return datasets.Features({
        "image": datasets.Image(), "image_id": datasets.Value("int64"),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=list(CLASSES)))},
    })


def _columns(rows: list[tuple[Image.Image, list[list[float]], list[int]]]) -> dict[str, list[Any]]:
    return {"image": [r[0] for r in rows], "image_id": list(range(len(rows))),
            "width": [r[0].width for r in rows], "height": [r[0].height for r in rows],
            "objects": [{"bbox": r[1], "category": r[2]} for r in rows]}


def scene(seed: int) -> tuple[Image.Image, list[list[float]], list[int]]:
    """One picture with its COCO boxes and class indices (into ``CLASSES``)."""
    rng = np.random.default_rng(seed)
    height, width = SIZES[int(rng.integers(len(SIZES)))]
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    count = 0 if rng.random() < _EMPTY_SHARE else int(rng.integers(1, _MAX_OBJECTS + 1))
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(count):
        kind = int(rng.integers(len(CLASSES)))
        side = int(rng.integers(_MIN_SIDE, _MAX_SIDE + 1))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        colour = tuple(int(c) for c in _class_colour(rng, kind))
        box = _draw(draw, CLASSES[kind], x0, y0, side, colour)
        boxes.append(box)
        labels.append(kind)
    return image, boxes, labels


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted texture: noise, stripes or a gradient, so that the shapes stand out but not trivially."""
    base = rng.integers(40, 140, size=3).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        texture = rng.normal(0, 18, size=(height, width, 1))
    elif kind == 1:
        period = int(rng.integers(4, 12))
        rows = (np.arange(height)[:, None] + np.arange(width)[None, :] * int(rng.integers(0, 2))) // period % 2
        texture = (rows[..., None] * 30.0) - 15.0
    else:
        texture = np.linspace(-30, 30, width)[None, :, None].repeat(height, axis=0)
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def _class_colour(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A bright colour whose saturated channel follows the class (red circles, green squares, blue triangles).

    Shape and colour both tell the classes apart, so that a detector trained from
    random weights for a minute on a CPU already finds them.
    """
    colour = rng.integers(0, 120, size=3)
    colour[kind] = int(rng.integers(220, 256))
    return colour


def _draw(draw: ImageDraw.ImageDraw, kind: str, x0: int, y0: int, side: int,
          colour: tuple[int, ...]) -> list[float]:
    """Draw one shape inside the square (x0, y0, side); return its COCO box."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([(x0 + side / 2, y0), (x0, y1), (x1, y1)], fill=colour)
    return [float(x0), float(y0), float(side), float(side)]
