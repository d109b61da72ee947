"""``zoo predict --save FOLDER`` (or ``--save out.png`` for one picture): each input with its boxes and labels drawn on.

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
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def save_pictures(inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
    """Write ``<input name>.png`` per input into ``folder`` (created if needed); return the paths written.

    A ``folder`` named like a picture (``out.png``, ``out.jpg``) that is not a folder
    already is the file to write, for a single input.
    """
    from zoo.tasks._detection_preprocess import load_image

    targets = picture_targets(inputs, folder)
    return _write_all([draw(load_image(item, i), result) for i, (item, result) in enumerate(zip(inputs, results))],
                      targets)


def picture_targets(inputs: list[Any], folder: Path) -> list[Path]:
    """``folder`` when it names one picture for one input, else ``<stem>.png`` per input inside it (created)."""
    single = folder.suffix.lower() in _PICTURE_SUFFIXES and not folder.is_dir()
    if single and len(inputs) != 1:
        raise ConfigError(f"--save {folder} names one picture but {len(inputs)} inputs were given; "
                          "give a folder to write one picture per input")
    if not single and folder.exists() and not folder.is_dir():
        raise ConfigError(f"--save {folder} is a file; give a folder to write the pictures into")
    if single:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return [folder]
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / name for name in _names(inputs)]


def _write_all(pictures: list[Image.Image], targets: list[Path]) -> list[Path]:
    """Each picture to a hidden partial file renamed into place; on failure the ones written go again."""
    written: list[Path] = []
    try:
        for picture, target in zip(pictures, targets):
            partial = target.with_name(f".{target.name}.partial")
            picture.save(partial, format="JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG")
            os.replace(partial, target)
            written.append(target)
    except BaseException:
        for path in [*written, *(t.with_name(f".{t.name}.partial") for t in targets)]:
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
