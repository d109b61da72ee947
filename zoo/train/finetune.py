"""``finetune(model, data, ...) -> run dir``: the Python API behind ``zoo finetune``.

    zoo finetune timm:test_resnet --random-init --data builtin:digits --strategy ddp --nproc 2 --out runs/digits

Everything is checked before anything is written (options, model, data,
columns, labels, the run dir). Distributed runs then go through
``launch.spawn`` (torch's elastic launcher); under an outside torchrun each
process runs ``run_worker`` directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.spec import ModelSpec
from zoo.train.config import TrainConfig, validate


def finetune(model: str, data: str, *, out: str | Path | None = None, strategy: str = "single", nproc: int = 1,
             epochs: int | None = None, max_steps: int | None = None, batch_size: int = 32, grad_accum: int = 1,
             lr: float = 5e-4, warmup: float = 0.1, precision: str = "fp32", seed: int = 0,
             eval_every: int | None = None, early_stopping: int | None = None, resume: bool = False,
             random_init: bool = False, text_column: str | None = None, label_column: str | None = None,
             split: str | None = None, val_data: str | None = None, registries: tuple[str, ...] | list[str] = (),
             **options: Any) -> Path:
    """Fine-tune ``model`` (any name ``zoo.resolve`` accepts) on ``data``; return the run dir.

    ``batch_size`` is the global micro-batch (split over the processes). Further
    keyword options: nnodes, rdzv_endpoint, rdzv_id, checkpoint_every, keep_checkpoints,
    pause_at, image_size, max_length, val_fraction, weight_decay, max_grad_norm,
    model_kwargs, progress (see ``TrainConfig``).
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown finetune option(s): {', '.join(unknown)}; see help(zoo.finetune)")
    config = TrainConfig(
        model=str(model), data=str(data), out=str(out or default_out(str(model))), strategy=strategy, nproc=nproc,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup,
        precision=precision, seed=seed, eval_every=eval_every, early_stopping=early_stopping, resume=resume,
        random_init=random_init, text_column=text_column, label_column=label_column, split=split,
        val_data=val_data, registries=tuple(registries), **options)
    from zoo.train.launch import in_torchelastic, spawn

    if in_torchelastic():
        run_worker(config, checked=False)
    elif config.distributed:
        preflight(config)
        spawn(config)
    else:
        run_worker(config, checked=True, prepared=preflight(config))
    return Path(config.out)


def default_out(model: str) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model).name or model).strip("-.")
    return Path("runs") / f"{stem or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}"


def preflight(config: TrainConfig) -> tuple[ModelSpec, Any]:
    """Check options, the run dir, the model and the data; write nothing."""
    validate(config)
    check_out(config)
    return prepare(config)


def check_out(config: TrainConfig) -> None:
    out = Path(config.out)
    if config.resume:
        from zoo.train.checkpoint import latest_checkpoint

        latest_checkpoint(out)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; give a new --out, or --resume to "
                          "continue the run in it")


def prepare(config: TrainConfig) -> tuple[ModelSpec, Any]:
    """The spec to train (labels still the base's) and the encoded data."""
    from zoo.data import prepare_data
    from zoo.resolve import resolve

    spec = training_spec(resolve(config.model, registries=config.registries), config)
    data = prepare_data(config.data, spec, text_column=config.text_column, label_column=config.label_column,
                        split=config.split, val_data=config.val_data, val_fraction=config.val_fraction,
                        seed=config.seed, max_length=config.max_length)
    if len(data.train) < config.batch_size * config.grad_accum:
        raise ConfigError(f"--batch-size {config.batch_size} x --grad-accum {config.grad_accum} is more than the "
                          f"{len(data.train)} training rows; use a smaller --batch-size")
    return spec, data


def training_spec(spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """The base spec as its task trains it (image size; a head task for a bare encoder ...)."""
    from zoo.tasks import get_task

    for _ in range(2):  # a task may hand over to another (an embedder trains as a classifier)
        adjusted = get_task(spec.task).training_spec(spec, config)
        if adjusted.task == spec.task:
            return adjusted
        spec = adjusted
    return spec


def run_worker(config: TrainConfig, *, checked: bool, prepared: tuple[ModelSpec, Any] | None = None) -> None:
    """One process's whole run: train, then (rank 0) write the run dir."""
    from zoo.train.worker import train_and_save

    train_and_save(config, checked=checked, prepared=prepared)
