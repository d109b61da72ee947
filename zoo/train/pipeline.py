"""``--pp N``: pipeline parallelism with ``torch.distributed.pipelining``, one stage per process.

A causal LM is split at decoder-layer boundaries by hand rather than traced
(``pipeline(..., split_spec)``): each rank keeps its share of the layers (the first
also the embeddings, the last the final norm and the LM head) in the model's own
module tree and runs the model's own ``forward``, with ``inputs_embeds`` carrying the
previous stage's hidden states. The library keeps computing what it computes today
(causal and packed-sequence masks, rotary or learned positions), parameter names stay
those of the whole model (so checkpoints, ``--keep best`` and the run dir's
``save_pretrained`` folder need no renaming), and nothing depends on export-tracing a
model whose forward builds masks with data-dependent control flow (the cutting is
zoo/train/stages.py, which the checks before launch use too).

The ``--grad-accum`` micro-batches of an optimizer step are the pipeline's
micro-batches, run by ``ScheduleGPipe`` or ``Schedule1F1B``; the loss is the task's
own, computed on the last stage, and scaled exactly as one process scales it, so a
step equals a single-process step. Tied input/output embeddings (GPT-2, Qwen2) live on
the first and the last stage as two copies whose gradients are summed before every
optimizer step, so the copies stay equal. Stages exchange tensors of a fixed shape
(the pipeline allocates its receive buffers once): text rows are padded to
``--max-length`` and a last partial batch with masked-out rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zoo.data.labels import IGNORE_INDEX
from zoo.errors import ConfigError
from zoo.train import batches
from zoo.train.loop import Trainer
from zoo.train.stages import cut_stage, is_text
from zoo.train.strategies import DDPStrategy


def make_pipeline(precision: str, stages: int, schedule: str) -> PipelineStrategy:
    """A started pipeline strategy (its process group initialised): what ``--pp N`` trains with."""
    strategy = PipelineStrategy(precision, stages=stages, schedule=schedule)
    strategy.setup()
    return strategy


class _StageModule(nn.Module):
    """What the pipeline runs: the model's own forward on this stage's part.

    A causal LM's first stage takes token ids, the others the previous hidden states as
    ``inputs_embeds``; non-last stages have identity norm and head, so their "logits" are the
    hidden states. A ResNet stage takes the image or the previous feature map.
    """

    def __init__(self, model: nn.Module, first: bool):
        super().__init__()
        self.model, self.first, self.text = model, first, is_text(model)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if not self.text:
            return self.model(x)
        key = "input_ids" if self.first else "inputs_embeds"
        return self.model(**{key: x}, position_ids=position_ids, use_cache=False).logits


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Names sharing one parameter (tied input and output embeddings), before the model is cut."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


@dataclass
class _Target:
    """What the loss function gets per micro-batch besides the last stage's output."""

    batch: dict[str, Any]
    inputs: dict[str, torch.Tensor]
    scale: float = 0.0
    rows: list[bool] | None = None  # evaluation: the rows that count (None: a training micro-batch)


class PipelineStrategy(DDPStrategy):
    """One pipeline stage per process; the world is one pipeline (no data parallelism beside it)."""

    name = "pipeline"

    def __init__(self, precision: str = "fp32", sync_batchnorm: bool = True, *, stages: int = 2,
                 schedule: str = "gpipe"):
        super().__init__(precision, sync_batchnorm)
        self.stages, self.schedule_name = stages, schedule
        self.stage = self.schedule = None
        self.tied_groups: list[tuple[str, Any]] = []  # (this rank's name of a tied weight, its ranks' group)
        self.counted: set[str] = set()  # this rank's parameters counted in the global gradient norm

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.pipelining import PipelineStage

        if self.world_size != self.stages:
            raise ConfigError(f"--pp {self.stages} needs one process per stage but {self.world_size} were started; "
                              f"start {self.stages}")
        tied = _tied_names(model)
        model = cut_stage(model, self.rank, self.stages).to(self.device)
        here = {name for name, _ in model.named_parameters()}
        self._group_tied(tied, here)
        self.stage = PipelineStage(_StageModule(model, self.rank == 0), self.rank, self.stages, self.device)
        return model

    def _group_tied(self, tied: list[list[str]], here: set[str]) -> None:
        """A process group per tied weight over the stages holding a copy (new_group: every rank calls it)."""
        owners: list[list[int]] = []
        for names in tied:
            # which stage holds each name: gathered, since only the stage itself knows what it kept
            mine = [name for name in names if name in here]
            found: list[Any] = [None] * self.world_size
            dist.all_gather_object(found, mine)
            ranks = sorted(r for r, kept in enumerate(found) if kept)
            owners.append(ranks)
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            if mine and group is not None:
                self.tied_groups.append((mine[0], group))
        skip = {name for names, ranks in zip(tied, owners) for name in names if self.rank != ranks[0]}
        self.counted = here - skip  # a tied weight counts once in the gradient norm: on its lowest stage

    @property
    def state_dict_options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(flatten_optimizer_state_dict=True)

    @property
    def trainer_class(self) -> type:
        return PipelineTrainer

    def start(self, loss_fn: Any, micro_batches: int) -> None:
        from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[self.schedule_name]
        # scale_grads=False: the loss function scales each micro-batch as one process would
        self.schedule = kind(self.stage, n_microbatches=micro_batches, loss_fn=loss_fn, scale_grads=False)

    def run(self, args: list[tuple[torch.Tensor, ...]], kwargs: list[dict[str, torch.Tensor]],
            *, train: bool) -> list[torch.Tensor] | torch.Tensor | None:
        """One pass of the schedule over the micro-batches; micro-batch i's loss target is the index i.

        Training returns the last stage's per-micro-batch losses (empty elsewhere); evaluation the
        last stage's outputs, concatenated over the micro-batches (None elsewhere).
        """
        args = [tuple(a.to(self.device) for a in arg) if self.rank == 0 else () for arg in args]
        kwargs = [{k: v.to(self.device) for k, v in kw.items()} for kw in kwargs]
        targets = [torch.tensor(i) for i in range(len(args))]
        if not train:
            return self.schedule.eval(arg_mbs=args, kwarg_mbs=kwargs, target_mbs=targets)
        losses: list[torch.Tensor] = []
        self.schedule.step(arg_mbs=args, kwarg_mbs=kwargs, target_mbs=targets, losses=losses, return_outputs=False)
        return losses

    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        params = dict(model.named_parameters())
        for name, group in self.tied_groups:  # the two copies of a tied weight: one summed gradient
            grad = params[name].grad
            dist.all_reduce(grad, group=group)
        # per-parameter norms as one process's get_total_norm takes them (in the parameters' dtype), then
        # their squares summed over the stages
        squares = torch.zeros((), dtype=torch.float64)
        for name in sorted(self.counted):
            if params[name].grad is not None:
                squares += torch.linalg.vector_norm(params[name].grad.detach()).double().cpu() ** 2
        dist.all_reduce(squares)
        norm = squares.sqrt().float()
        grads = [p for p in params.values() if p.grad is not None]
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every stage's weights, gathered on rank 0 into the whole model's state dict."""
        own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        parts: list[Any] = [None] * self.world_size if self.is_main else None
        dist.gather_object(own, parts, dst=0)
        if not self.is_main:
            return {}
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part)
        return merged


class PipelineTrainer(Trainer):
    """zoo's training loop with the schedule running each step's micro-batches and each evaluation batch."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.strategy.start(self._loss, self.config.grad_accum)
        self._targets: list[_Target] = []  # the micro-batches the schedule runs now, by index

    def _loss(self, output: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The task's loss of micro-batch ``index`` on the last stage, scaled as one process scales it.

        The pipeline also calls this once on a copy of the first micro-batch to infer shapes,
        so it records nothing: the losses come back from the schedule.
        """
        target = self._targets[int(index)]
        if target.rows is not None:  # evaluation: scored from the returned outputs instead
            return output.new_zeros(())
        total, _ = self.task.training_loss(self._runner(output), target.batch, target.inputs)
        return total * target.scale

    def _micro(self, indices: list[int], rows: list[bool] | None = None) -> tuple[Any, Any, _Target]:
        """A micro-batch as (first stage's inputs, every stage's keyword inputs, loss target)."""
        examples = self.data.train if rows is None else self.data.val
        batch = examples.batch(indices)
        text = "position_ids" in batch
        batch = fixed_width(batch, self.config.max_length) if text else batch
        inputs = {k: v.to(self.strategy.device) for k, v in self.task.training_inputs(self.spec, batch).items()}
        if text:
            return (inputs["input_ids"],), {"position_ids": inputs["position_ids"]}, _Target(batch, inputs, rows=rows)
        return tuple(inputs.values()), {}, _Target(batch, inputs, rows=rows)

    def _runner(self, output: torch.Tensor) -> _Computed:
        """The last stage's output as the task's loss expects the model's: a transformers output or logits."""
        return _Computed(SimpleNamespace(logits=output) if "position_ids" in self._targets[0].batch else output)

    def train_step(self, micro_batches: list[list[int]]) -> float:
        s, k = self.strategy, len(micro_batches)
        started = time.perf_counter()
        torch.manual_seed(batches.micro_seed(self.config.seed, self.state.step, 0, s.rank))
        args, kwargs, targets = zip(*(self._micro(m) for m in micro_batches))
        counts = [self.data.train.target_count(indices) for indices in micro_batches]
        for target, count in zip(targets, counts):
            target.scale = 1.0 / (count * k)  # the sum over all micro-batches is one big-batch mean
        self._targets = list(targets)
        losses = s.run(list(args), list(kwargs), train=True)
        if losses:  # the last stage: the sums behind the logged train loss
            totals = sum(loss.detach().item() / target.scale for loss, target in zip(losses, targets))
            self._pending += torch.tensor([totals, sum(counts)])
        norm = s.optimizer_step(self.model, self.optimizer, self.config.max_grad_norm)
        self.scheduler.step()
        self.clock["train_s"] += time.perf_counter() - started
        self.clock["steps"] += 1
        return norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Every rank runs every validation batch (the last stage scores them), in groups of --grad-accum."""
        s, n, size, k = self.strategy, len(self.data.val), self.config.batch_size, self.config.grad_accum
        chunks = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        chunks += [[]] * (-len(chunks) % k)  # whole groups: a schedule runs exactly k micro-batches
        stats, records = torch.zeros(2, dtype=torch.float64), []
        self.model.eval()
        for g in range(0, len(chunks), k):
            # a short batch is filled with row 0, masked out: every micro-batch has the same shape
            micro = [self._micro(c + [0] * (size - len(c)), [True] * len(c) + [False] * (size - len(c)))
                     for c in chunks[g:g + k]]
            args, kwargs, targets = zip(*micro)
            self._targets = list(targets)
            outputs = s.run(list(args), list(kwargs), train=False)
            if outputs is None:
                continue
            for output, target in zip(outputs.split(size), targets):
                loss, count, found = self.task.eval_batch(self._runner(output), target.batch, target.inputs,
                                                          target.rows)
                stats += torch.tensor([loss, count], dtype=torch.float64)
                records += found
        self.model.train()
        loss, count = s.all_sum(stats).tolist()
        return {"val_loss": loss / max(count, 1), **self.task.metrics(s.gather(records), self.data.labels)}


class _Computed:
    """A stand-in for the model in the task's loss: returns the output the pipeline's last stage computed."""

    def __init__(self, output: Any):
        self.output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def fixed_width(batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A text batch padded on the right to ``width`` tokens: the stages exchange tensors of one fixed shape.

    The padding is a continuation of each row's last example, never a target, and only attends
    to itself and earlier tokens, so no real position's output changes.
    """
    grow = width - batch["input_ids"].shape[1]
    if grow <= 0:
        return batch
    steps = torch.arange(1, grow + 1)
    positions = batch["position_ids"]
    return {**batch,
            "input_ids": torch.cat([batch["input_ids"], batch["input_ids"][:, -1:].expand(-1, grow)], 1),
            "position_ids": torch.cat([positions, positions[:, -1:] + steps], 1),
            "labels": torch.cat([batch["labels"], torch.full((len(positions), grow), IGNORE_INDEX)], 1)}
