"""Golden data in the ONNX Model Zoo layout: ``test_data_set_N/input_K.pb`` and ``output_K.pb``.

Each file is one serialised ``onnx.TensorProto`` (written with ``onnx.numpy_helper``),
so any ONNX tool can replay an artifact's golden data without zoo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifact import GOLDEN_PREFIX, read_tensor

PREFIX = GOLDEN_PREFIX


def write_golden(folder: Path, index: int, inputs: dict[str, np.ndarray],
                 outputs: dict[str, np.ndarray]) -> Path:
    """Write one data set; inputs and outputs keep their graph order and names."""
    from onnx import numpy_helper

    target = Path(folder) / f"{PREFIX}{index}"
    target.mkdir(parents=True, exist_ok=False)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for k, (name, array) in enumerate(tensors.items()):
            proto = numpy_helper.from_array(np.ascontiguousarray(array), name=name)
            (target / f"{kind}_{k}.pb").write_bytes(proto.SerializeToString())
    return target


def golden_indices(cases: list[Any], count: int = 3) -> list[int]:
    """One grid case per seed, rotating through the kinds, so the golden sets differ in shape."""
    by_seed: dict[int, list[int]] = {}
    for index, case in enumerate(cases):
        by_seed.setdefault(case.seed, []).append(index)
    picked = [group[i % len(group)] for i, group in enumerate(by_seed.values())]
    return picked[:count]


def golden_sets(folder: Path) -> list[Path]:
    sets = [p for p in Path(folder).glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(sets, key=lambda p: int(p.name[len(PREFIX):]))


def read_golden(data_set: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of one data set, keyed by the tensor names stored in the files.

    Each file goes through ``zoo.artifact.read_tensor``: confined to the artifact,
    size-capped, and its header checked against its data before any array is made.
    """
    return _read_kind(data_set, "input"), _read_kind(data_set, "output")


def _read_kind(data_set: Path, kind: str) -> dict[str, np.ndarray]:
    numbered = [(p, p.stem.split("_", 1)[1]) for p in data_set.glob(f"{kind}_*.pb")]
    files = sorted((p for p, k in numbered if k.isdigit()), key=lambda p: int(p.stem.split("_", 1)[1]))
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        name, array = read_tensor(data_set.parent, f"{data_set.name}/{path.name}")
        tensors[name or f"{kind}_{len(tensors)}"] = array
    return tensors
