"""``ZooModule(name_or_run, **options)``: any zoo model as a ``LightningModule``.

The model is built as ``zoo finetune`` builds it (``zoo.train.model.build_model``: the source's model,
the pretrained head kept or a new one for the data's labels), once the ``ZooDataModule`` beside it has
read the labels; the loss and the validation metrics are the task's, the optimiser and schedule zoo's
(``zoo.train.loop.build_optimizer``: AdamW, warmup, cosine / linear / constant) with the same option
names and defaults as ``zoo finetune``. What belongs to Lightning's ``Trainer`` (epochs, steps,
precision, strategy, devices, checkpoints) stays there.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from zoo.errors import ConfigError
from zoo.sources import ckpt
from zoo.spec import ModelSpec
from zoo.train.config import TrainConfig, normalise_location, validate

MODEL_OPTIONS = ("task", "new_head", "random_init", "image_size", "model_kwargs", "registries", "seed",
                 "gradient_checkpointing")
OPTIMIZER_OPTIONS = ("lr", "weight_decay", "max_grad_norm", "warmup", "scheduler")
# zoo finetune options that a Lightning user gives elsewhere: where
ELSEWHERE = {
    "epochs": "Trainer(max_epochs=...)", "max_steps": "Trainer(max_steps=...)",
    "grad_accum": "Trainer(accumulate_grad_batches=...)", "precision": "Trainer(precision='bf16-mixed')",
    "strategy": "Trainer(strategy=...)", "nproc": "Trainer(devices=...)", "nnodes": "Trainer(num_nodes=...)",
    "sync_batchnorm": "Trainer(sync_batchnorm=True)", "eval_every": "Trainer(val_check_interval=...)",
    "progress": "Trainer(enable_progress_bar=...)", "resume": "Trainer.fit(ckpt_path=...)",
    "early_stopping": "the EarlyStopping callback", "keep": "the ModelCheckpoint callback",
    "checkpoint_every": "the ModelCheckpoint callback", "save_total_limit": "ModelCheckpoint(save_top_k=...)",
    "out": "Trainer(default_root_dir=...)",
}
DATA_OPTIONS = ("data", "batch_size", "text_column", "label_column", "split", "val_data", "val_fraction",
                "max_length", "packing")
DATA_PLACEHOLDER = "(ZooDataModule)"  # the data is the data module's: validation needs a name only


class ZooModule(pl.LightningModule):
    """A zoo model (alias, ``hf:ORG/NAME``, ``timm:ARCH``, a model folder or a zoo run) to train with Lightning.

    Options: ``task``, ``new_head``, ``random_init``, ``image_size``, ``model_kwargs``, ``registries``,
    ``seed``, ``gradient_checkpointing`` (the model), and ``lr``, ``weight_decay``, ``max_grad_norm``,
    ``warmup``, ``scheduler`` (the optimiser), each as ``zoo finetune`` reads it. ``zoo`` is the record a
    checkpoint carries (``load_from_checkpoint`` passes it back): with it the model is built at once.
    """

    def __init__(self, name_or_run: str | Path, zoo: dict[str, Any] | None = None, **options: Any):
        super().__init__()
        self.config = module_config(str(name_or_run), options)
        # the names and options as the config holds them (strings, not paths): what rebuilds the module
        self.save_hyperparameters({"name_or_run": self.config.model, **{k: getattr(self.config, k) for k in options}})
        self.model: torch.nn.Module | None = None
        self.spec: ModelSpec | None = None
        self.labels: tuple[str, ...] = ()
        self._val_stats = torch.zeros(2, dtype=torch.float64)
        self._val_records: list[Any] = []
        if zoo is not None:
            built = ckpt.read_record(zoo)
            self._build(built.spec, built.head_labels, built.labels, pretrained=False)

    # ------------------------------------------------------------ the model, once the data is known

    def training_spec(self, data: str, image_size: int | None) -> ModelSpec:
        """The spec this module trains on ``data`` (what ZooDataModule encodes the data for): the image size
        given to either module (both: they must agree), with the task's adjustments for this data."""
        size = self.config.image_size
        if image_size is not None and size is not None and image_size != size:
            raise ConfigError(f"ZooModule(image_size={size}) and ZooDataModule(image_size={image_size}) differ; "
                              "give the same size to both, or to one of them")
        from zoo.resolver import resolve
        from zoo.train.preflight import training_spec

        config = dataclasses.replace(self.config, data=normalise_location(data), image_size=size or image_size)
        return training_spec(resolve(config.model, registries=config.registries), config)

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        from zoo.lightning.data import ZooDataModule

        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, ZooDataModule):
            raise ConfigError("ZooModule takes its labels and preprocessing from a ZooDataModule; pass one: "
                              "trainer.fit(module, datamodule=ZooDataModule(DATA, ...))")
        spec = self.training_spec(datamodule.data, datamodule.image_size)
        plan = datamodule.prepare_for(spec, self.config.new_head).plan
        self._build(spec, plan.names if plan.new_head else None, plan.names, pretrained=None)

    def _build(self, spec: ModelSpec, head_labels: tuple[str, ...] | None, labels: tuple[str, ...],
               pretrained: bool | None) -> None:
        from zoo.tasks import get_task
        from zoo.train.model import build_model

        plan = _Plan(names=head_labels or labels, new_head=head_labels is not None)
        # every process builds the same initial weights, without touching the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.model = build_model(spec, plan, self.config, pretrained=pretrained)
        self.model.train()  # sources hand models over in eval mode; Lightning keeps each module's mode
        self.spec, self.labels, self.task = spec, tuple(labels), get_task(spec.task)
        # the task's runner wraps self.model: kept out of the module tree, so its weights are saved once
        object.__setattr__(self, "runner", self.task.training_module(self.model, spec))
        self.hparams[ckpt.RECORD] = ckpt.record(spec, head_labels=head_labels, labels=self.labels,
                                                model_kwargs=self.config.model_kwargs)

    # ------------------------------------------------------------ steps

    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.task.training_inputs(self.spec, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, count = self.task.training_loss(self.runner, batch, self._inputs(batch))
        loss = total / max(count, 1)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_stats.zero_()
        self._val_records = []

    def validation_step(self, batch: tuple[dict[str, Any], list[bool]], batch_idx: int) -> None:
        examples, rows = batch
        loss, count, found = self.task.eval_batch(self.runner, examples, self._inputs(examples), rows)
        self._val_stats += torch.tensor([loss, count], dtype=torch.float64)
        self._val_records += found

    def on_validation_epoch_end(self) -> None:
        """The validation loss and the task's metrics over every process's rows (the same on each)."""
        stats, records = self._val_stats, self._val_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (stats.tolist(), records))
            stats = torch.tensor([s for s, _ in gathered], dtype=torch.float64).sum(0)
            records = [r for _, part in gathered for r in part]
        loss, count = stats.tolist()
        metrics = {"val_loss": loss / max(count, 1), **self.task.metrics(records, self.labels)}
        # the same values on every process: averaging them changes nothing, and Lightning expects it of
        # epoch-level values in distributed runs
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------ optimiser

    def configure_optimizers(self) -> dict[str, Any]:
        from zoo.train.loop import build_optimizer

        optimizer, scheduler = build_optimizer(self.model, self.config, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """``max_grad_norm`` (zoo's default 1.0) unless the Trainer was given its own ``gradient_clip_val``."""
        value = self.config.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if value:
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The two fields of a label plan that building a model reads."""

    names: tuple[str, ...]
    new_head: bool


def module_config(name: str, options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of ZooModule's options: unknown names, and loop or data options, refused at once."""
    allowed = MODEL_OPTIONS + OPTIMIZER_OPTIONS
    problems = []
    for key in sorted(set(options) - set(allowed)):
        if key in ELSEWHERE:
            problems.append(f"{key} belongs to Lightning: {ELSEWHERE[key]}")
        elif key in DATA_OPTIONS:
            problems.append(f"{key} is an option of the data: ZooDataModule(..., {key}=...)")
        elif key.startswith("lora_"):
            problems.append(f"{key}: ZooModule trains every weight; LoRA runs with zoo finetune --lora-r")
        else:
            close = difflib.get_close_matches(key, allowed, n=1)
            problems.append(f"unknown option {key}" + (f" (did you mean {close[0]}?)" if close else ""))
    if problems:
        raise ConfigError(f"ZooModule: {'; '.join(problems)}; ZooModule's options: {', '.join(allowed)}")
    given = dict(options)
    if "registries" in given:  # file names, kept as strings: a checkpoint's hyper-parameters hold plain values
        given["registries"] = tuple(str(r) for r in given["registries"] or ())
    config = TrainConfig(model=normalise_location(name), data=DATA_PLACEHOLDER, **given)
    validate(config)
    return config
