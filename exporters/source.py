"""The torch side of an export: the module to trace, its task, and the grid to verify it on.

Both the exporter (``exporters.onnx``) and ``zoo verify --against-source``
(``exporters.verify``) build one of these; neither imports the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo import sources
from zoo.spec import ModelSpec
from zoo.tasks import get_task
from zoo.tasks.base import Case, Task

SEEDS = (0, 1, 2)  # each seed picks different sentences (or pixels) for the grid
DEFAULT_INIT_SEED = 0  # random initialisation is seeded, so a smoke test gives the same weights every run


@dataclass
class Source:
    """A model ready to export: the module, its task, its processor, the grid and the trace inputs."""

    spec: ModelSpec  # with the preprocessing the source itself filled in (timm data config)
    task: Task
    module: Any
    processor: Any | None  # the source's own tokenizer / image processor, when the task uses one
    folder: Path | None  # the model's local folder (None for a timm:ARCH name)
    cases: list[Case]
    example: dict[str, np.ndarray]
    model_kwargs: dict[str, Any] | None = None  # constructor overrides, recorded so the model can be rebuilt
    seed: int | None = None  # the seed of random initial weights (None: the weights were loaded)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.task.output_names(self.spec)


def build_source(spec: ModelSpec, *, random_init: bool = False, model_kwargs: dict[str, Any] | None = None,
                 module: Any | None = None, seeds: tuple[int, ...] | None = None,
                 seed: int = DEFAULT_INIT_SEED) -> Source:
    """The torch module (as its task exports it), the processor and the verification grid for ``spec``.

    ``module`` replaces the module built from the spec (its forward takes the spec's
    inputs by name and returns the task's outputs in order). ``seed`` seeds random
    initial weights (``random_init``), so the same call builds the same model.
    """
    task = get_task(spec.task)
    seeded = random_init and module is None  # a module given by the caller brings its own weights
    if module is None:
        model, preprocess = _create(spec, random_init, seed, model_kwargs)
        spec = dataclasses.replace(spec, preprocess=preprocess)
        module = task.export_module(model, spec)
    module.eval()
    folder = sources.for_spec(spec).local_folder(spec)
    processor = task.load_processor(spec, folder)
    return Source(spec=spec, task=task, module=module, processor=processor, folder=folder,
                  cases=task.grid(spec, processor, SEEDS if seeds is None else seeds),
                  example=task.export_example(spec, processor), model_kwargs=model_kwargs,
                  seed=seed if seeded else None)


def _create(spec: ModelSpec, random_init: bool, seed: int, model_kwargs: dict[str, Any] | None) -> tuple[Any, Any]:
    import torch

    from zoo.create import create_model

    if not random_init:
        return create_model(spec, pretrained=True, model_kwargs=model_kwargs)
    # fork_rng: seeding here leaves the caller's random state as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(spec, pretrained=False, model_kwargs=model_kwargs)


def torch_outputs(module: Any, inputs: dict[str, np.ndarray], names: tuple[str, ...], *,
                  keep_dtype: bool = False) -> dict[str, np.ndarray]:
    """The module's outputs on numpy inputs, by output name, as float32/int numpy arrays (or as computed)."""
    import torch

    with torch.no_grad():
        result = module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    values = result if isinstance(result, (tuple, list)) else (result,)
    out = {}
    for name, value in zip(names, values):
        value = value.detach().cpu()
        out[name] = (value.float() if value.is_floating_point() and not keep_dtype else value).numpy()
    return out
