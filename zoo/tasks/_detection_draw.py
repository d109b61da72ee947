"""``zoo predict --save FOLDER``: each input picture with its boxes and labels drawn on, as a PNG.

Pictures are drawn in memory first, then each is written to a hidden temporary
file and renamed into place; if anything fails, the files this call already
wrote are removed again, so the folder never holds half a result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from zoo.errors import ConfigError

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def save_pictures(inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
    """Write ``<input name>.png`` per input into ``folder`` (created if needed); return the paths written."""
    from zoo.tasks._detection_preprocess import load_image

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--save {folder} is a file; give a folder to write the pictures into")
    pictures = [draw(load_image(item, i), result) for i, (item, result) in enumerate(zip(inputs, results))]
    names = _names(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for picture, name in zip(pictures, names):
            target = folder / name
            partial = folder / f".{name}.partial"
            picture.save(partial, format="PNG")
            os.replace(partial, target)
            written.append(target)
    except BaseException:
        for path in [*written, *folder.glob(".*.partial")]:
            path.unlink(missing_ok=True)
        raise
    return written


def draw(image: Image.Image, detections: Any) -> Image.Image:
    """A copy of ``image`` with one coloured rectangle and a "label score" tag per detection."""
    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    for found in detections:
        colour = _PALETTE[found.label_id % len(_PALETTE)]
        x0, y0, x1, y1 = found.box
        pen.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=width)
        tag = f"{found.label} {found.score:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), tag)
        lift = bottom - top + 2
        top_y = y0 - lift if y0 - lift >= 0 else y0  # above the box, inside it at the top edge
        pen.rectangle((x0, top_y, x0 + right - left + 4, top_y + lift), fill=colour)
        pen.text((x0 + 2, top_y + 1), tag, fill=(255, 255, 255))
    return canvas


def _names(inputs: list[Any]) -> list[str]:
    """``<stem>.png`` per input (``picture-N.png`` for in-memory ones), numbered when two would collide."""
    names: list[str] = []
    for i, item in enumerate(inputs):
        stem = Path(item).stem if isinstance(item, (str, Path)) else f"picture-{i}"
        name, n = f"{stem}.png", 1
        while name in names:
            name, n = f"{stem}-{n}.png", n + 1
        names.append(name)
    return names
