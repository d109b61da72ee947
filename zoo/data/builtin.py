"""Offline data sets that need no download: ``builtin:NAME``, each offered by a task.

A task lists its own in ``Task.builtin_datasets`` (image classification offers
``builtin:digits``: scikit-learn ships the 1,797 labelled 8x8 digit images inside
its wheel; they become an ``image``/``label`` data set exactly like an
``imagefolder`` one, so they flow through the same preprocessing).
"""

from __future__ import annotations

import hashlib
from typing import Any

from zoo.errors import DataError

def builtins() -> dict[str, Any]:
    """Every task's built-in data sets, by name."""
    from zoo.tasks import all_tasks

    found: dict[str, Any] = {}
    for task in all_tasks():
        found.update(task.builtin_datasets())
    return found


def load_builtin(name: str) -> tuple[Any, str]:
    """(DatasetDict with a 'train' split, sha256 fingerprint) of ``builtin:NAME``."""
    known = builtins()
    if name not in known:
        raise DataError(f"unknown built-in data set 'builtin:{name}'; valid: "
                        + ", ".join(f"builtin:{b}" for b in sorted(known)))
    return known[name]()


def digits() -> tuple[Any, str]:
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values run 0..16; scale to the full 8-bit range of a greyscale image
    pixels = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)
    names = [str(n) for n in bunch.target_names]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {"image": [Image.fromarray(p, mode="L").convert("RGB") for p in pixels],
            "label": [int(t) for t in bunch.target]}
    table = datasets.Dataset.from_dict(rows, features=features)
    digest = hashlib.sha256(pixels.tobytes() + bunch.target.astype(np.int64).tobytes()).hexdigest()
    return datasets.DatasetDict({"train": table}), digest
