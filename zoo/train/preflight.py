"""Checks before a run starts: options, the run dir, the model and the data (nothing is written).

``zoo.train.finetune`` runs these before launching; each worker runs them again
under an outside torchrun. The training loop and the workers read the run's
rules (``metric_name``, ``ERROR_FILE``) from here, so no module of the package
imports ``zoo.train.finetune`` back.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.spec import ModelSpec
from zoo.train.config import TrainConfig, validate


def default_out(model: str) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model).name or model).strip("-.")
    return Path("runs") / f"{stem or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}"


def preflight(config: TrainConfig) -> tuple[ModelSpec, Any]:
    """Check options, the run dir, the model and the data; write nothing."""
    validate(config)
    check_out(config)
    return prepare(config)


ERROR_FILE = "worker-error.txt"


def check_out(config: TrainConfig) -> None:
    out = Path(config.out)
    if config.resume:
        from zoo.train.checkpoint import latest_checkpoint

        latest_checkpoint(out)
    elif out.exists() and (not out.is_dir() or any(p.name != ERROR_FILE for p in out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; give a new --out, or --resume to "
                          "continue the run in it")


def prepare(config: TrainConfig) -> tuple[ModelSpec, Any]:
    """The spec to train (labels still the base's) and the encoded data.

    A resumed run takes the spec its checkpoint stored (the model's files come from
    the run dir, never the hub) and must find the same data it started with.
    """
    from zoo.train.data import prepare_data

    spec = _resumed_spec(config) if config.resume else _base_spec(config)
    check_metric(spec, config)
    check_language_options(spec, config)
    if config.pp > 1:
        from zoo.train.stages import check_model

        check_model(spec, config)
    data = prepare_data(config.data, spec, text_column=config.text_column, label_column=config.label_column,
                        split=config.split, val_data=config.val_data, val_fraction=config.val_fraction,
                        seed=config.seed, max_length=config.max_length, new_head=config.new_head,
                        packing=config.packing)
    if config.resume:
        _check_same_data(config, data)
    if len(data.train) < config.batch_size * config.grad_accum:
        raise ConfigError(f"--batch-size {config.batch_size} x --grad-accum {config.grad_accum} is more than the "
                          f"{len(data.train)} training rows; use a smaller --batch-size")
    return spec, data


def _base_spec(config: TrainConfig) -> ModelSpec:
    from zoo.resolver import resolve

    return training_spec(resolve(config.model, registries=config.registries), config)


def _resumed_spec(config: TrainConfig) -> ModelSpec:
    from zoo.train.checkpoint import latest_checkpoint, stored_spec

    return stored_spec(latest_checkpoint(Path(config.out)), Path(config.out))


def _check_same_data(config: TrainConfig, data: Any) -> None:
    from zoo.train.checkpoint import latest_checkpoint, stored_data

    before = stored_data(latest_checkpoint(Path(config.out)))
    if before.get("fingerprint") != data.fingerprint:
        raise ConfigError(f"--data {config.data} has changed since the run started (its content hash differs); "
                          "--resume needs the data the run began with: restore it, or start a new run")


def training_spec(spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """The base spec as its task trains it (``--task``; image size; a head task for a bare encoder ...)."""
    from zoo.tasks import get_task

    if config.task and config.task != spec.task:
        spec = with_task(spec, config.task)
    for _ in range(2):  # a task may hand over to another (an embedder trains as a classifier)
        adjusted = get_task(spec.task).training_spec(spec, config)
        if adjusted.task == spec.task:
            return adjusted
        spec = adjusted
    return spec


def with_task(spec: ModelSpec, task_name: str) -> ModelSpec:
    """``spec`` trained for another task: a new head, so the base's labels (if any) no longer apply."""
    from zoo.tasks import get_task

    task, base = get_task(task_name), get_task(spec.task)
    if task.modality != base.modality:
        raise ConfigError(f"--task {task_name} takes {task.modality} input but {spec.name} is a {spec.task} "
                          f"model taking {base.modality} input; give a {task.modality} model")
    pp = dataclasses.replace(spec.preprocess, pooling=None, normalize=False)
    return dataclasses.replace(spec, task=task_name, labels=None, preprocess=pp)


def check_metric(spec: ModelSpec, config: TrainConfig) -> None:
    from zoo.tasks import get_task

    task = get_task(spec.task)
    if config.metric is not None and metric_name(config.metric) not in task.metric_names:
        names = ", ".join(m.removeprefix("val_") for m in task.metric_names)
        raise ConfigError(f"--metric {config.metric} is not reported for {spec.task}; valid: {names}")


def check_language_options(spec: ModelSpec, config: TrainConfig) -> None:
    """--packing and LoRA train causal language models (the tasks that generate) only."""
    from zoo.tasks import get_task

    given = [flag for flag, on in (("--packing", config.packing), ("--lora-r", config.lora_r is not None)) if on]
    if given and not get_task(spec.task).generates:
        raise ConfigError(f"{' and '.join(given)} train text-generation models, but {spec.name} is a {spec.task} "
                          f"model; leave {' and '.join(given)} out")


def metric_name(given: str) -> str:
    return given if given.startswith("val_") else f"val_{given}"
