"""Versions of the libraries zoo works with, recorded in manifests, run.json and benchmark results.

Reads package metadata only; nothing here imports the libraries themselves.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# key in the record -> distribution name on the package index
PACKAGES = {
    "zoo": "zoo-toolkit", "torch": "torch", "transformers": "transformers", "timm": "timm",
    "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "numpy": "numpy",
    "tokenizers": "tokenizers", "datasets": "datasets", "scikit-learn": "scikit-learn",
}


def library_versions() -> dict[str, str | None]:
    """Installed version of each package in PACKAGES (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            found[key] = version(dist)
        except PackageNotFoundError:
            found[key] = None
    return found
