"""The training loop: AdamW, warmup + schedule, accumulation, clipping, evaluation, best step, checkpoints.

It talks to the model only through a ``Strategy`` (see strategies.py) and never
asks which one it has; what differs between tasks (inputs, loss, metrics) it
asks the task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.spec import ModelSpec
from zoo.tasks import get_task
from zoo.train import batches, checkpoint
from zoo.train.config import TrainConfig
from zoo.train.report import MetricsLog

LOG_EVERY = 10  # optimizer steps between train-loss log lines (also logged before every evaluation)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint's trainer.json."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_value: float | None = None  # of the chosen metric
    best_step: int | None = None
    best: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    last: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    paused: bool = False  # stopped by pause_at; a --resume run continues


LOWER_IS_BETTER = ("loss", "perplexity", "wer", "cer")  # losses and error rates (speech recognition's WER, CER)


def lower_is_better(metric: str) -> bool:
    return metric.endswith(LOWER_IS_BETTER)


def lr_factor(kind: str, total_steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` of the steps, then cosine or linear decay towards 0, or constant.

    Written out rather than taken from transformers' ``get_scheduler``, whose warmup
    gives the very first step a learning rate of 0: here step s of the warmup already
    learns at (s + 1) / warmup-steps of the peak.
    """
    warm = int(total_steps * warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress if kind == "linear" else 1.0

    return factor


def adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # no weight decay on biases and norm scales (1-d parameters), as BERT and timm recipes do
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def build_optimizer(model: nn.Module, config: TrainConfig, total_steps: int,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[Any, Any]:
    """zoo's AdamW (or the one a strategy already built with the model) and its learning-rate schedule."""
    optimizer = optimizer or adamw(model, config)
    factor = lr_factor(config.scheduler, total_steps, config.warmup)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    def __init__(self, model: nn.Module, runner: nn.Module, strategy: Any, data: Any, config: TrainConfig,
                 run_dir: Path, spec: ModelSpec):
        from zoo.train.preflight import metric_name

        self.model, self.runner, self.strategy, self.data, self.config = model, runner, strategy, data, config
        self.run_dir = Path(run_dir)
        self.spec = spec
        self.task = get_task(spec.task)
        self.metric = metric_name(config.metric or self.task.primary_metric)
        self.per_epoch = batches.steps_per_epoch(len(data.train), config.batch_size, config.grad_accum)
        self.total = config.max_steps or (config.epochs or 3) * self.per_epoch
        self.optimizer, self.scheduler = build_optimizer(model, config, self.total, strategy.client_optimizer(model))
        self.state = TrainState()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", strategy.is_main)
        self._pending = torch.zeros(2)  # local train-loss sum and target count since the last log line
        self.kept_step: int | None = None
        # LoRA: checkpoints hold the adapters (the base is frozen and reloaded from the model on resume)
        self.adapters_only = config.lora_r is not None
        self.clock = {"start": time.perf_counter(), "train_s": 0.0, "steps": 0}

    # ------------------------------------------------------------ steps

    def inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = self.strategy.device
        return {name: value.to(device) for name, value in self.task.training_inputs(self.spec, batch).items()}

    def train_step(self, micro_batches: list[list[int]]) -> float:
        """One optimizer step over ``grad_accum`` global micro-batches; returns the gradient norm."""
        s, k = self.strategy, len(micro_batches)
        started = time.perf_counter()
        for i, global_indices in enumerate(micro_batches):
            torch.manual_seed(batches.micro_seed(self.config.seed, self.state.step, i, s.rank))
            local = batches.local_part(global_indices, s.rank, s.world_size)
            batch = self.data.train.batch(local)
            # sum over this rank / all targets of the global batch, times world size because
            # DDP and FSDP average gradients over ranks: the result equals one big-batch mean
            scale = s.world_size / (self.data.train.target_count(global_indices) * k)
            with s.gradient_sync(self.model, enabled=i == k - 1):
                with s.autocast():
                    total, count = self.task.training_loss(self.runner, batch, self.inputs(batch))
                s.backward(total * scale)
            self._pending += torch.tensor([total.item(), count])
        norm = s.optimizer_step(self.model, self.optimizer, self.config.max_grad_norm)
        self.scheduler.step()
        self.clock["train_s"] += time.perf_counter() - started
        self.clock["steps"] += 1
        return norm

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (summed over all ranks) and the task's metrics over every rank's records."""
        s, examples = self.strategy, self.data.val
        indices, valid = batches.eval_shard(len(examples), s.rank, s.world_size)
        size = max(1, self.config.batch_size // s.world_size)
        stats = torch.zeros(2, dtype=torch.float64)  # loss sum, targets
        records: list[Any] = []
        self.model.eval()
        for start in range(0, len(indices), size):
            batch = examples.batch(indices[start:start + size])
            with s.autocast():
                loss, count, found = self.task.eval_batch(self.runner, batch, self.inputs(batch),
                                                          valid[start:start + size])
            stats += torch.tensor([loss, count], dtype=torch.float64)
            records += found
        self.model.train()
        loss, count = s.all_sum(stats).tolist()
        return {"val_loss": loss / max(count, 1), **self.task.metrics(s.gather(records), self.data.labels)}

    # ------------------------------------------------------------ bookkeeping

    def log_train(self) -> None:
        """Mean train loss since the last line (a collective: every rank calls it at the same steps)."""
        pending = self.strategy.all_sum(self._pending.clone())
        self._pending.zero_()
        if pending[1] > 0:
            self.log.write({"step": self.state.step, "epoch": self.state.epoch,
                            "train_loss": float(pending[0] / pending[1]), "lr": self.scheduler.get_last_lr()[0]})

    def record_eval(self, metrics: dict[str, float]) -> tuple[bool, bool]:
        """Log an evaluation and track the best by the chosen metric.

        Returns (improved, stop): stop when early stopping's patience has run out (the
        same answer on every rank).
        """
        st = self.state
        st.last = dict(metrics)
        self.log.write({"step": st.step, "epoch": st.epoch, **metrics})
        value = metrics[self.metric]
        lower = lower_is_better(self.metric)
        improved = st.best_value is None or (value < st.best_value if lower else value > st.best_value)
        if improved:
            st.best_value, st.best_step, st.best, st.bad_evals = value, st.step, dict(metrics), 0
        else:
            st.bad_evals += 1
        patience = self.config.early_stopping
        return improved, self.strategy.agree(patience is not None and st.bad_evals >= patience)

    def trainer_state(self) -> dict[str, Any]:
        return {"state": self.state.__dict__, "total_steps": self.total, "scheduler": self.scheduler.state_dict(),
                "data_order": {"seed": self.config.seed, "epoch": self.state.epoch,
                               "step_in_epoch": self.state.step_in_epoch, "batch_size": self.config.batch_size},
                "rng": "reseeded per micro-step from (seed, step, micro-step, rank)",
                "world_size": self.strategy.world_size, "strategy": self.strategy.name,
                "config": self.config.to_dict(), "spec": self.spec.to_dict(), "data": self.data.info(),
                "timing": self.timing()}

    def save_checkpoint(self) -> Path:
        folder = checkpoint.checkpoint_dir(self.run_dir) / f"{checkpoint.PREFIX}{self.state.step}"
        if self.strategy.is_main:
            folder.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(folder, self.model, self.optimizer, self.trainer_state(), self.strategy,
                        trainable_only=self.adapters_only)
        if self.strategy.is_main:
            checkpoint.prune(self.run_dir, self.config.save_total_limit, self.state.best_step)
        return folder

    def resume(self) -> None:
        saved = checkpoint.load(checkpoint.latest_checkpoint(self.run_dir), self.model, self.optimizer,
                                self.strategy, trainable_only=self.adapters_only)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["state"])
        self.state.stopped_early = self.state.paused = False
        self.log.truncate_after(self.state.step)

    def restore_kept(self) -> None:
        """``--keep best``: load the best step's weights from its checkpoint (a collective)."""
        st = self.state
        if self.config.keep != "best" or st.best_step is None or st.best_step == st.step:
            self.kept_step = st.step
            return
        folder = checkpoint.checkpoint_dir(self.run_dir) / f"{checkpoint.PREFIX}{st.best_step}"
        checkpoint.load_model(folder, self.model, trainable_only=self.adapters_only)
        self.kept_step = st.best_step

    def timing(self) -> dict[str, float]:
        """This invocation's wall time and training throughput (global samples per second of training steps)."""
        samples = self.clock["steps"] * self.config.batch_size * self.config.grad_accum
        train_s = self.clock["train_s"]
        return {"elapsed_s": round(time.perf_counter() - self.clock["start"], 3), "steps": self.clock["steps"],
                "samples": samples, "samples_per_s": round(samples / train_s, 2) if train_s > 0 else 0.0}


def _step_plan(trainer: Trainer):
    c, n = trainer.config, len(trainer.data.train)
    while True:
        st = trainer.state
        plan = batches.epoch_steps(n, c.batch_size, c.grad_accum, c.seed, st.epoch)
        for micro in plan[st.step_in_epoch:]:
            yield micro, trainer.state.step_in_epoch + 1 == len(plan)
        trainer.state.epoch += 1
        trainer.state.step_in_epoch = 0


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.description}"), disable=not enabled, transient=False)


def fit(trainer: Trainer) -> TrainState:
    """Train until the step budget, early stopping or ``pause_at``; evaluate at the end."""
    c, evaluated_at = trainer.config, -1
    with _progress(trainer.strategy.is_main and c.progress) as bar:
        task = bar.add_task("", total=trainer.total, completed=trainer.state.step)
        for micro, epoch_end in _step_plan(trainer):
            if trainer.state.step >= trainer.total:
                break
            trainer.train_step(micro)
            st = trainer.state
            st.step, st.step_in_epoch = st.step + 1, st.step_in_epoch + 1
            evaluate = st.step % c.eval_every == 0 if c.eval_every else epoch_end
            paused = c.pause_at is not None and st.step >= c.pause_at and st.step < trainer.total
            if st.step % LOG_EVERY == 0 or evaluate or paused:
                trainer.log_train()
            improved = stop = False
            if evaluate:
                (improved, stop), evaluated_at = trainer.record_eval(trainer.evaluate()), st.step
                bar.update(task, description=_describe(st, trainer.metric))
            bar.update(task, completed=st.step)
            periodic = st.step % c.checkpoint_every == 0 if c.checkpoint_every else evaluate
            # --keep best: the best step must have a checkpoint to come back to
            if periodic or paused or (improved and c.keep == "best"):
                trainer.save_checkpoint()
            if stop or paused:
                st.stopped_early, st.paused = stop, paused and not stop
                return st
    if evaluated_at != trainer.state.step:
        trainer.log_train()
        trainer.record_eval(trainer.evaluate())  # the last step needs no checkpoint: its weights are in memory
    return trainer.state


def _describe(st: TrainState, metric: str) -> str:
    return (f"val loss {st.last['val_loss']:.4f} "
            f"{metric.removeprefix('val_')} {st.last.get(metric, math.nan):.3f}")
