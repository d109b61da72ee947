"""zoo: resolve a model name, fine-tune it, export a verified ONNX artifact, run it without torch.

Public API (heavy libraries load on first use, so ``import zoo`` stays light):

    spec = zoo.resolve("resnet50")
    model, preprocess = zoo.create_model(spec, pretrained=False)

This module is the top of the layer stack (README "Architecture"): it may name any
layer, and no module of zoo imports it back except the entry points.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from zoo.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ExportError,
    GateError,
    InputError,
    LaunchError,
    ModelUnavailableError,
    NameNotFoundError,
    RegistryError,
    VerificationError,
    ZooError,
)
from zoo.spec import InputSpec, ModelSpec, Preprocess

__version__ = "0.1.0"

_LAZY = {
    "resolve": "zoo.resolver",
    "load_registry": "zoo.registry",
    "create_model": "zoo.create",
    "export_onnx": "exporters.onnx",
    "verify_artifact": "exporters.verify",
    "optimize": "exporters.optimize",
    "finetune": "zoo.train.finetune",
    "load": "zoo.runtime",
    "ExportedModel": "zoo.runtime",
}

__all__ = [
    "ArtifactError", "ConfigError", "DataError", "ExportError", "GateError", "InputError", "InputSpec",
    "LaunchError", "ModelSpec", "ModelUnavailableError", "NameNotFoundError", "Preprocess",
    "RegistryError", "VerificationError", "ZooError", "__version__", *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    from zoo.create import create_model
    from zoo.registry import load_registry
    from zoo.resolver import resolve


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute '{name}'")
