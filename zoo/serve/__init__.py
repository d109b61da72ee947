"""``zoo serve``: artifacts over HTTP in the Open Inference Protocol (KServe v2), no torch.

    from zoo.serve import ServeSettings, create_app, load_models
    settings = ServeSettings(max_batch_size=32, max_wait_ms=5)
    app = create_app(load_models(["artifacts/minilm"], settings), settings)   # any ASGI server runs it

``zoo.serve.triton.write_model_repository`` turns an artifact into a Triton/KServe
model repository entry. The server needs the ``[serve]`` extra (fastapi,
uvicorn, prometheus-client); ``import zoo.serve`` itself needs none of it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "create_app": "zoo.serve.app",
    "load_models": "zoo.serve.models",
    "ServeSettings": "zoo.serve.models",
    "ServedModel": "zoo.serve.models",
    "serve": "zoo.serve.server",
    "write_model_repository": "zoo.serve.triton",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo.serve' has no attribute '{name}'")
