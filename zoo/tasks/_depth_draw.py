"""``zoo predict --save``: each depth map as a 16-bit greyscale PNG, with a coloured preview beside it.

The 16-bit picture stretches the map's own range to 0..65535 (as the depth-estimation
pipeline stretches it to 0..255 for its ``depth`` picture), so near and far keep the
model's ordering; the preview, ``<name>-preview.png``, colours the same values from
dark violet (lowest) through red to pale yellow (highest). Written as the segmentation
overlays are: ``--save out.png`` for one input, else one file pair per input in a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.tasks._detection_draw import _write_all, picture_targets

# (position, RGB) stops of the preview's colour ramp, a magma-like dark-to-light sequence
_RAMP = ((0.0, (0, 0, 4)), (0.25, (81, 18, 124)), (0.5, (183, 55, 121)), (0.75, (252, 137, 97)),
         (1.0, (252, 253, 191)))
PREVIEW_SUFFIX = "-preview"


def save_pictures(inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
    """Write ``<name>.png`` (16-bit depth) and ``<name>-preview.png`` per input; return the paths written."""
    targets = [t.with_suffix(".png") for t in picture_targets(inputs, folder)]
    pictures, paths = [], []
    for target, result in zip(targets, results):
        scaled = stretched(result.depth)
        pictures += [Image.fromarray(np.rint(scaled * 65535).astype(np.uint16)), Image.fromarray(coloured(scaled))]
        paths += [target, target.with_name(f"{target.stem}{PREVIEW_SUFFIX}.png")]
    return _write_all(pictures, paths)


def stretched(depth: np.ndarray) -> np.ndarray:
    """The map's values scaled to [0, 1] by its own range (all zeros for a flat map)."""
    low, high = float(depth.min()), float(depth.max())
    return (depth.astype(np.float64) - low) / (high - low) if high > low else np.zeros(depth.shape)


def coloured(scaled: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of values in [0, 1] along the ramp."""
    stops = [p for p, _ in _RAMP]
    channels = [np.interp(scaled, stops, [c[k] for _, c in _RAMP]) for k in range(3)]
    return np.rint(np.stack(channels, axis=-1)).clip(0, 255).astype(np.uint8)
