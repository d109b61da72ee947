"""Offline data sets that need no download: ``builtin:NAME``, each offered by a task.

A task lists its own in ``Task.builtin_datasets`` and loads them with
``Task.load_builtin``. Image classification offers ``builtin:digits`` from here:
scikit-learn ships the 1,797 labelled 8x8 digit images inside its wheel; they
become an ``image``/``label`` data set exactly like an ``imagefolder`` one, so
they flow through the same preprocessing.
"""

from __future__ import annotations

import hashlib
from typing import Any


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
