"""The artifact's source model rebuilt in eager PyTorch, for ``zoo bench --vs-torch`` only.

This module imports torch at the top on purpose: importing it is the test of
whether torch is installed. Nothing on the runtime path imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.manifest import Manifest


def torch_model(manifest: Manifest) -> tuple[Any, str]:
    """(inference module, note) rebuilt from the manifest's spec: its local folder, else its source id."""
    from zoo import sources
    from zoo.tasks import get_task

    spec = manifest.source_spec()  # refuses trust_remote_code from an artifact
    source = sources.for_spec(spec)
    task = get_task(spec.task)
    local = bool(spec.local_path and Path(spec.local_path).is_dir())
    kwargs = manifest.model_kwargs or None  # a shrunken test model records its constructor overrides
    if local:
        model, _ = source.create_model(spec, pretrained=True, model_kwargs=kwargs)
        note = f"weights from {spec.local_path}"
    else:
        # No local weights: same architecture with random weights (fine for timing, not for outputs).
        width = manifest.outputs[0].shape[-1] if manifest.outputs[0].shape else None
        classes = width if task.has_labels and isinstance(width, int) else None
        model, _ = source.create_model(spec, pretrained=False, num_labels=classes, model_kwargs=kwargs)
        note = f"{spec.source_name} rebuilt with random weights (source folder not found)"
    module = task.export_module(model, spec).eval()
    return module, note


def torch_runner(manifest: Manifest, *, threads: int | None = None
                 ) -> tuple[Callable[[dict[str, np.ndarray]], Callable[[], np.ndarray]], str]:
    """A factory: graph arrays -> a no-argument call that runs eager torch on them."""
    if threads is not None:
        torch.set_num_threads(threads)
    module, note = torch_model(manifest)

    def runner(feed: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def call() -> np.ndarray:
            with torch.inference_mode():
                out = module(**tensors)
            return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

        return call

    return runner, f"eager torch {torch.__version__} ({torch.get_num_threads()} threads), {note}"
