"""Checkpoints with torch distributed checkpoint (DCP), and a marker that says one is complete.

    <run>/checkpoints/step_N/            DCP shards (.metadata, __R_0.distcp) of model + optimizer
    <run>/checkpoints/step_N/trainer.json  step, epoch, data position, scheduler, best metric, RNG scheme,
                                           and the run's config, spec and data fingerprint (what --resume reuses)
    <run>/checkpoints/step_N/COMPLETE      written last, by rank 0, after every rank has finished

DCP stores tensors by their global shape, so a checkpoint written by N
processes loads into M processes (or another strategy): resume resharding.
A folder without ``COMPLETE`` (a run killed mid-write) is never loaded.

``--strategy deepspeed`` writes DeepSpeed's own checkpoint instead of the DCP shards,
in ``step_N/deepspeed`` (see zoo/train/deepspeed.py); trainer.json and the marker are the same.

A LoRA run's checkpoints hold the trainable weights only (``trainable_only``: the adapters,
not the frozen base, which can be 1000x larger); its resume loads the base's pretrained
weights again and the adapters, optimizer and schedule from the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from zoo.spec import ModelSpec
    from zoo.train.config import TrainConfig

MARKER = "COMPLETE"
TRAINER_FILE = "trainer.json"
PREFIX = "step_"
ENGINE_DIR, ENGINE_TAG = "deepspeed", "zoo"  # step_N/deepspeed/zoo: --strategy deepspeed's own checkpoint
BASE_DIR = "base"  # <run>/base: the base model's config and preprocessor files (no weights), for --resume


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / MARKER).is_file() and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint, or a ConfigError saying there is none to resume from."""
    found = complete_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"--resume: no complete checkpoint in {checkpoint_dir(run_dir)}; start without "
                          "--resume, or point --out at the run dir to continue")
    return found[-1]


def read_trainer(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / TRAINER_FILE).read_text())


def stored_config(folder: Path) -> TrainConfig:
    """The options the run was started with (what ``--resume`` continues with)."""
    from zoo.train.config import TrainConfig

    saved = read_trainer(folder).get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {folder / TRAINER_FILE} stores no run config (written by an older zoo); "
                          "start a new run")
    return TrainConfig.from_dict(saved)


def stored_spec(folder: Path, run_dir: Path) -> ModelSpec:
    """The spec the run trained; its files come from ``<run>/base`` when the run saved them there."""
    import dataclasses

    from zoo.spec import ModelSpec

    spec = ModelSpec.from_dict(read_trainer(folder)["spec"])
    base = Path(run_dir) / BASE_DIR
    return dataclasses.replace(spec, local_path=str(base.resolve())) if base.is_dir() else spec


def stored_data(folder: Path) -> dict[str, Any]:
    return dict(read_trainer(folder).get("data") or {})


def save(folder: Path, model: Any, optimizer: Any, trainer: dict[str, Any], strategy: Any, *,
         trainable_only: bool = False) -> None:
    """Every rank writes its shards; rank 0 writes trainer.json and then the marker."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if strategy.is_main and folder.exists():
        shutil.rmtree(folder)  # a leftover incomplete folder from an interrupted run
    strategy.barrier()
    if _deepspeed(model):
        _save_engine(folder, model)
    else:
        model_state, optim_state = get_state_dict(model, optimizer, options=_options(trainable_only, strategy))
        with _single_process_ok():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
    strategy.barrier()
    if strategy.is_main:
        (folder / TRAINER_FILE).write_text(json.dumps(trainer, indent=1))
        (folder / MARKER).write_text("ok\n")
    strategy.barrier()


def load(folder: Path, model: Any, optimizer: Any, strategy: Any = None, *,
         trainable_only: bool = False) -> dict[str, Any]:
    """Load shards into the (already wrapped) model and optimizer; return the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if _deepspeed(model):
        _load_engine(folder, model)
        return json.loads((folder / TRAINER_FILE).read_text())

    options = _options(trainable_only, strategy)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optim": optim_state}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=options)
    return json.loads((folder / TRAINER_FILE).read_text())


def load_model(folder: Path, model: Any, *, trainable_only: bool = False) -> None:
    """Only the model's weights from a checkpoint (``--keep best`` at the end of a run); every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if _deepspeed(model):
        _load_engine(folder, model)  # with the optimizer: model/ is written from its fp32 master weights
        return
    options = _options(trainable_only)
    state = {"model": get_model_state_dict(model, options=options)}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"], options=options)


def _options(trainable_only: bool, strategy: Any = None) -> Any:
    """The state-dict options of a run.

    Trainable only (LoRA): the frozen weights are left out, and loading does not ask for them (strict off).
    A strategy may bring its own: pipeline stages store optimizer groups per parameter name, since each
    stage's groups hold other parameters (one shared group list would keep only one stage's).
    """
    import dataclasses

    from torch.distributed.checkpoint.state_dict import StateDictOptions

    base = getattr(strategy, "state_dict_options", None) or StateDictOptions()
    return dataclasses.replace(base, ignore_frozen_params=trainable_only, strict=not trainable_only)


def _deepspeed(model: Any) -> bool:
    """A DeepSpeed engine (zoo/train/deepspeed.py), told by its checkpoint API without importing deepspeed."""
    return all(callable(getattr(model, name, None)) for name in ("save_checkpoint", "load_checkpoint",
                                                                  "zero_optimization_stage"))


def _save_engine(folder: Path, engine: Any) -> None:
    """Every rank writes its ZeRO partitions (weights, fp32 master weights, optimizer state) in DeepSpeed's format."""
    engine.save_checkpoint(str(folder / ENGINE_DIR), tag=ENGINE_TAG, save_latest=False)


def _load_engine(folder: Path, engine: Any) -> None:
    """A step's DeepSpeed checkpoint into the engine, the optimizer state and fp32 master weights included."""
    path, _ = engine.load_checkpoint(str(folder / ENGINE_DIR), tag=ENGINE_TAG, load_lr_scheduler_states=False)
    if path is None:
        raise ConfigError(f"--resume: {folder / ENGINE_DIR} holds no DeepSpeed checkpoint; start a new run")


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns that it runs without a process group; for the single strategy that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def prune(run_dir: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints and the best one (rank 0 only); drop incomplete ones."""
    found = complete_checkpoints(run_dir)
    for folder in found[:-keep] if keep > 0 else found:
        if best_step is None or folder.name != f"{PREFIX}{best_step}":
            shutil.rmtree(folder, ignore_errors=True)
