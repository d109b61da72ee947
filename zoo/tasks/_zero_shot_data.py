"""Zero-shot training data: ``builtin:shapes`` (coloured shapes with their names), labels and batches.

    zoo finetune ./clip-tiny --data builtin:shapes        # nine classes: "red circle" ... "blue triangle"
    zoo finetune ./clip-tiny --data ./pictures/            # imagefolder: pictures/<class name>/<file>

A row is a picture and its class (a ClassLabel, or a string column); the class's
caption is the prompt predict uses, ``TEMPLATE.format(name)`` ("This is a photo of
red circle."), so the text tower learns the very prompts it is later asked about. Every
batch carries every class's caption tokens (tokenised once); the loss and validation's
zero-shot accuracy are in ``_zero_shot_torch``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from zoo.errors import DataError

COLOURS = {"red": 0, "green": 1, "blue": 2}  # the saturated channel
SHAPES = ("circle", "square", "triangle")
CLASSES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
SIDE = 64
TRAIN_IMAGES = 360
VALIDATION_IMAGES = 90
PROMPT_PREFIX = "class_"  # batch keys of every class's caption tokens
ACTIVATION_KEY = "activation"  # the batch's note of the model's scoring (softmax: CLIP, sigmoid: SigLIP), for its loss
_SEEDS = {"train": 61000, "validation": 72000}


def shapes() -> tuple[Any, str]:
    """(DatasetDict with train and validation splits, sha256 fingerprint): one coloured shape per picture."""
    import datasets

    digest = hashlib.sha256()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    splits = {}
    for split, count in (("train", TRAIN_IMAGES), ("validation", VALIDATION_IMAGES)):
        rows = [scene(_SEEDS[split] * 1000 + i) for i in range(count)]
        for image, label in rows:
            digest.update(image.tobytes() + bytes([label]))
        splits[split] = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]},
                                                   features=features)
    return datasets.DatasetDict(splits), digest.hexdigest()


def scene(seed: int) -> tuple[Image.Image, int]:
    """One SIDE x SIDE textured picture with one shape of one colour, and its class index into CLASSES."""
    from PIL import ImageDraw

    from zoo.tasks._shapes import _background, _draw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(_background(rng, SIDE, SIDE))
    label = int(rng.integers(len(CLASSES)))
    colour_name, shape = CLASSES[label].split(" ")
    colour = rng.integers(0, 100, size=3)
    colour[COLOURS[colour_name]] = int(rng.integers(210, 256))
    side = int(rng.integers(28, 49))
    x0, y0 = int(rng.integers(0, SIDE - side + 1)), int(rng.integers(0, SIDE - side + 1))
    _draw(ImageDraw.Draw(image), shape, x0, y0, side, tuple(int(c) for c in colour))
    return image, label


def plan_labels(table: Any, column: str) -> Any:
    """The data's class names (ClassLabel order, else sorted strings); the model keeps its towers (no new head)."""
    from zoo.data.labels import LabelPlan, class_names

    names = class_names(table, column)
    values = {v for v in table[column] if v is not None}
    if names is None:
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(f"column '{column}' must hold class names (text, or a ClassLabel): a zero-shot model "
                            "learns each class from its caption; name the column with --label-column")
        names = sorted(values)
    if len(values) < 2:
        raise DataError(f"column '{column}' holds {len(values)} distinct class(es); contrastive training needs at "
                        "least 2 (an image folder: one sub-folder per class)")
    return LabelPlan(tuple(names), new_head=False, source="classlabel" if class_names(table, column) else "sorted",
                     distinct=len(values))


class ZeroShotExamples:
    """Pictures (``ImageExamples``) with each class's caption tokenised once, which every batch carries."""

    def __init__(self, images: Any, prompts: dict[str, np.ndarray], activation: str):
        self.images, self.prompts, self.activation = images, prompts, activation

    def __len__(self) -> int:
        return len(self.images)

    def target_count(self, indices: list[int]) -> int:
        return len(indices)  # the model's loss is a mean over the batch's pictures

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        classes = {PROMPT_PREFIX + name: torch.from_numpy(values) for name, values in self.prompts.items()}
        return {**self.images.batch(indices), **classes, ACTIVATION_KEY: self.activation}
