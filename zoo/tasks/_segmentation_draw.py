"""``zoo predict --save``: each picture with its class map laid over it, one colour per class, and a legend.

Files are written as the detection pictures are (``_detection_draw``): ``--save out.png``
for one input, else ``<input name>.png`` per input in a folder, each renamed into place
and none left behind when one fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from zoo.tasks._classify import label_name
from zoo.tasks._detection_draw import _write_all, picture_targets

OPACITY = 0.5  # the mask's share of each pixel's colour
_GOLDEN = 0.618033988749895  # hue step between class ids: neighbouring ids get distant colours


def save_pictures(inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
    """Write one overlay per input (``folder`` itself when it names one picture); return the paths written."""
    from zoo.tasks._detection_preprocess import load_image

    targets = picture_targets(inputs, folder)
    return _write_all([draw(load_image(item, i), result) for i, (item, result) in enumerate(zip(inputs, results))],
                      targets)


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, bright and far apart for nearby class ids."""
    from colorsys import hsv_to_rgb

    return np.asarray([[round(255 * c) for c in hsv_to_rgb((i * _GOLDEN) % 1.0, 0.75, 0.95)] for i in range(count)],
                      dtype=np.uint8)


def draw(image: Image.Image, segmentation: Any) -> Image.Image:
    """``image`` blended with its class colours, and a legend of the classes present (largest first)."""
    label_map = segmentation.label_map
    colours = palette(int(label_map.max(initial=0)) + 1)
    picture = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - OPACITY) * picture + OPACITY * colours[label_map].astype(np.float32)
    canvas = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(canvas)
    y = 2
    for class_id in segmentation.counts():
        tag = label_name(segmentation.labels, class_id)
        left, top, right, bottom = pen.textbbox((14, y), tag)
        if bottom > canvas.height:
            break
        pen.rectangle((2, y + 1, 11, y + 10), fill=tuple(int(c) for c in colours[class_id]), outline=(0, 0, 0))
        pen.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        pen.text((14, y), tag, fill=(255, 255, 255))
        y = bottom + 3
    return canvas
