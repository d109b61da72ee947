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

from zoo.errors import ConfigError, ZooError, first_line
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
        from zoo.train.checkpoint import latest_checkpoint, read_trainer

        check_resumed_strategy(config, read_trainer(latest_checkpoint(out)))
    elif out.exists() and (not out.is_dir() or any(p.name != ERROR_FILE for p in out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; give a new --out, or --resume to "
                          "continue the run in it")


def check_resumed_strategy(config: TrainConfig, saved: dict[str, Any]) -> None:
    """DeepSpeed's checkpoints load only into DeepSpeed, with the process count that wrote them.

    torch DCP checkpoints (single, ddp, fsdp) reshard to any strategy and count; DeepSpeed writes its
    own format, with ZeRO's partitions per rank, and refuses another data-parallel world size (its
    universal-checkpoint conversion is an offline step zoo does not run).
    """
    before, world = saved.get("strategy"), saved.get("world_size")
    if "deepspeed" not in (before, config.strategy) or before is None:
        return
    if before != config.strategy:
        raise ConfigError(f"--strategy {config.strategy} cannot resume the checkpoint of this run, written by "
                          f"--strategy {before} (DeepSpeed's checkpoint format is not torch's DCP); resume with "
                          f"--strategy {before}")
    if world is not None and config.nproc * config.nnodes != world:
        raise ConfigError(f"--nproc {config.nproc} --nnodes {config.nnodes} starts {config.nproc * config.nnodes} "
                          f"processes but this DeepSpeed checkpoint was written by {world}: ZeRO partitions it per "
                          f"rank and loads it only into as many; resume with {world} processes")


def prepare(config: TrainConfig) -> tuple[ModelSpec, Any]:
    """The spec to train (labels still the base's) and the encoded data.

    A resumed run takes the spec its checkpoint stored (the model's files come from
    the run dir, never the hub) and must find the same data it started with.
    """
    from zoo.train.data import prepare_data

    spec = _resumed_spec(config) if config.resume else _base_spec(config)
    check_metric(spec, config)
    check_language_options(spec, config)
    check_tensor_parallel(spec, config)
    if config.pp > 1:
        from zoo.train.stages import check_model

        check_model(spec, config)
    data = prepare_data(config.data, spec, text_column=config.text_column, label_column=config.label_column,
                        split=config.split, val_data=config.val_data, val_fraction=config.val_fraction,
                        seed=config.seed, max_length=config.max_length, new_head=config.new_head,
                        packing=config.packing)
    check_metric_on_data(spec, config, data)
    if config.resume:
        _check_same_data(config, data)
        if config.lora_r is not None:
            lora_base_spec(config, spec)  # its checkpoints hold the adapters: the base must still be there
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


def lora_base_spec(config: TrainConfig, spec: ModelSpec) -> ModelSpec:
    """``spec`` with the base model's weights (``--model`` again): a resumed LoRA run loads them, not the run dir's."""
    try:
        base = _base_spec(config)
    except ZooError as exc:
        raise ConfigError(f"--resume of a LoRA run loads the base model's weights again, but {config.model} "
                          f"cannot be loaded: {first_line(exc)}; put the base model back where the run found it") from exc
    return dataclasses.replace(spec, local_path=base.local_path, source_id=base.source_id, revision=base.revision)


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


def check_metric_on_data(spec: ModelSpec, config: TrainConfig, data: Any) -> None:
    """A --metric the task reports, but not on this data (exact-match of plain text): refused before training."""
    from zoo.tasks import get_task

    if config.metric is None:
        return
    problem = get_task(spec.task).metric_problem(metric_name(config.metric), data)
    if problem:
        raise ConfigError(f"--metric {config.metric} {problem}")


def check_language_options(spec: ModelSpec, config: TrainConfig) -> None:
    """--packing and LoRA train causal language models (the tasks that generate) only."""
    from zoo.tasks import get_task

    given = [flag for flag, on in (("--packing", config.packing), ("--lora-r", config.lora_r is not None)) if on]
    if given and not get_task(spec.task).generates:
        raise ConfigError(f"{' and '.join(given)} train text-generation models, but {spec.name} is a {spec.task} "
                          f"model; leave {' and '.join(given)} out")


def check_tensor_parallel(spec: ModelSpec, config: TrainConfig) -> None:
    """--tp: every reason it cannot split this model this way, in one ConfigError."""
    if config.tp > 1:
        from zoo.train.tensor_parallel import problems

        found = problems(config, spec)
        if found:
            raise ConfigError("; ".join(found))


def metric_name(given: str) -> str:
    return given if given.startswith("val_") else f"val_{given}"
