"""What the protocol and Triton call things: tensor datatypes, the platform, versions, model names.

numpy only, so that ``zoo triton`` runs on the core install (no pydantic, no fastapi).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConfigError

# Triton's platform name for models run by its onnxruntime backend; the same graph runs here.
PLATFORM = "onnxruntime_onnx"
# zoo serves one version of each model; Triton's repository layout wants a numbered folder.
VERSION = "1"

# The protocol's tensor datatypes and their numpy dtypes (little-endian, as the binary extension sends them).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def datatype_of(dtype: Any) -> str:
    """The protocol's name for a numpy dtype or a manifest dtype string (``float32`` -> ``FP32``)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "U", "S"):
        return "BYTES"
    return _BY_KIND[(dt.kind, dt.itemsize)]


def parse_artifact_arg(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the folder's name becomes the model's name)."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).resolve().name, text
    if not _NAME.match(name):
        raise ConfigError(f"model name '{name}' (from '{text}') is not URL-safe; use letters, digits, '_', '.', "
                          "'-', or name it yourself: NAME=PATH")
    return name, Path(path)
