"""Depth training data: ``builtin:shapes`` (generated pictures with their depth), batches, and the metrics' sums.

Each built-in picture is a floor receding to the horizon (near at the bottom) with one to
three shapes standing in front of it; the target is relative inverse depth (disparity:
larger is nearer), what Depth Anything and DPT's MiDaS checkpoints predict. Brightness
and size follow nearness, so that a small model learns the mapping in a short run.
Batches go through the model's own image processor; targets keep their own size and are
resized to the prediction in the loss.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from zoo.errors import DataError
from zoo.tasks._dense import PictureExamples, stacked_pixels

SIDE = 64
TRAIN_IMAGES = 256
VALIDATION_IMAGES = 64
DEPTH_COLUMNS = ("depth", "depth_map", "disparity")
FAR, NEAR = 0.2, 1.0  # disparity at the horizon and at the picture's bottom edge
_SEEDS = {"train": 61000, "validation": 72000}


def shapes() -> tuple[Any, str]:
    """(DatasetDict with train and validation splits, sha256 fingerprint): pictures and their disparity maps."""
    import datasets

    digest = hashlib.sha256()
    features = datasets.Features({"image": datasets.Image(),
                                  "depth": datasets.Array2D(shape=(SIDE, SIDE), dtype="float32")})
    splits = {}
    for split, count in (("train", TRAIN_IMAGES), ("validation", VALIDATION_IMAGES)):
        rows = [scene(_SEEDS[split] * 1000 + i) for i in range(count)]
        for image, depth in rows:
            digest.update(image.tobytes() + depth.tobytes())
        splits[split] = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "depth": [r[1] for r in rows]},
                                                   features=features)
    return datasets.DatasetDict(splits), digest.hexdigest()


def scene(seed: int) -> tuple[Image.Image, np.ndarray]:
    """One SIDE x SIDE picture and its (SIDE, SIDE) float32 disparity."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(FAR, NEAR, SIDE, dtype=np.float32)[:, None].repeat(SIDE, axis=1)
    hue = rng.integers(30, 90, size=3).astype(np.float32)
    texture = rng.normal(0, 6, size=(SIDE, SIDE, 1))
    image = Image.fromarray(np.clip(hue + rows[..., None] * 120 + texture, 0, 255).astype(np.uint8))
    depth = Image.fromarray(rows, mode="F")
    pen, depth_pen = ImageDraw.Draw(image), ImageDraw.Draw(depth)
    for near in np.sort(rng.uniform(0.3, 1.0, size=int(rng.integers(1, 4)))):  # far shapes first: near ones cover
        side = int(12 + 24 * near)
        x0, y0 = int(rng.integers(0, SIDE - side + 1)), int(rng.integers(0, SIDE - side + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        grey = int(60 + 190 * near)
        pen.ellipse(box, fill=(grey, int(grey * 0.8), int(rng.integers(0, 256))))
        depth_pen.ellipse(box, fill=float(near))
    return image, np.asarray(depth, dtype=np.float32)


class DepthExamples(PictureExamples):
    """Indexable training rows; ``batch`` returns pixel_values and each picture's disparity (``depth``)."""

    @classmethod
    def checked(cls, table: Any, columns: dict[str, str], processor: Any, what: str) -> DepthExamples:
        """Every row decoded once: a finite depth map the size of its picture."""
        for row in range(len(table)):
            record = table[row]
            image, depth = record[columns["input"]], np.asarray(record[columns["label"]], dtype=np.float32)
            if depth.shape != image.size[::-1]:
                raise DataError(f"{what} row {row}: the depth map is {'x'.join(map(str, depth.shape))} but the "
                                f"picture {image.size[1]}x{image.size[0]} (height x width); give one value per pixel")
            if not np.isfinite(depth).all():
                raise DataError(f"{what} row {row}: the depth map holds {int((~np.isfinite(depth)).sum())} NaN or "
                                "infinite values; replace them (or drop the row)")
        return cls(table, columns, processor)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        from zoo.tasks._detection_preprocess import to_rgb

        rows = [self.table[i] for i in indices]
        encoded = self.processor(images=[to_rgb(r[self.columns["input"]]) for r in rows], return_tensors=None)
        return {"pixel_values": torch.from_numpy(stacked_pixels(encoded["pixel_values"])),
                "depth": [torch.as_tensor(np.asarray(r[self.columns["label"]], dtype=np.float32)) for r in rows]}


def depth_metrics(records: list[list[float]]) -> dict[str, float]:
    """δ1 (share of pixels within a factor 1.25 of the truth) and AbsRel, over every pixel of every picture."""
    if not records:
        return {"val_delta1": 0.0, "val_abs_rel": 0.0}
    within, pixels, relative = np.asarray(records, dtype=np.float64).sum(axis=0)
    return {"val_delta1": float(within / max(pixels, 1)), "val_abs_rel": float(relative / max(pixels, 1))}
