"""``TrainConfig``: every fine-tuning option as one frozen dataclass of plain values.

It travels unchanged from the CLI to each worker process (pickled by the
elastic launcher) and into ``run.json``, so a run records exactly what it did.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import ConfigError

STRATEGIES = ("single", "ddp", "fsdp")
CPU_OVERSUBSCRIPTION = 4  # CPU processes per core beyond which --nproc is surely a typo
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str
    out: str
    strategy: str = "single"
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 32  # global: samples per micro-step summed over all ranks
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: float = 0.1  # fraction of all optimizer steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    seed: int = 0
    eval_every: int | None = None  # optimizer steps; None = every epoch
    early_stopping: int | None = None  # evaluations without improvement of val loss
    checkpoint_every: int | None = None  # optimizer steps; None = at every evaluation
    keep_checkpoints: int = 2
    resume: bool = False
    pause_at: int | None = None  # stop after this step (leaving a checkpoint) to continue with resume
    random_init: bool = False
    text_column: str | None = None
    label_column: str | None = None
    split: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.1
    image_size: int | None = None
    max_length: int = 128
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    registries: tuple[str, ...] = ()
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["registries"] = list(self.registries)
        return data

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1 or self.strategy != "single"


def validate(config: TrainConfig) -> None:
    """All option problems at once, before anything heavy starts."""
    problems = [p for p in (_check_choices(config), _check_counts(config), _check_lengths(config)) if p]
    problems = [line for group in problems for line in group]
    if problems:
        raise ConfigError("; ".join(problems))


def _check_choices(c: TrainConfig) -> list[str]:
    out = []
    if c.strategy not in STRATEGIES:
        out.append(f"--strategy {c.strategy} is unknown; valid: {', '.join(STRATEGIES)}")
    if c.precision not in PRECISIONS:
        out.append(f"--precision {c.precision} is unknown; valid: fp32, bf16, fp16 (fp16: single and ddp only)")
    if c.strategy == "fsdp" and c.precision == "fp16":
        out.append("--strategy fsdp refuses --precision fp16 (fp16 needs loss scaling that sharded "
                   "training does not do here); use --precision bf16 or fp32")
    if c.strategy == "single" and (c.nproc > 1 or c.nnodes > 1):
        out.append(f"--strategy single runs one process but --nproc {c.nproc} --nnodes {c.nnodes} was given; "
                   "use --strategy ddp or fsdp")
    if c.nnodes > 1 and not c.rdzv_endpoint:
        out.append(f"--nnodes {c.nnodes} needs --rdzv-endpoint HOST:PORT (and --rdzv-id) shared by all nodes")
    return out


def _check_counts(c: TrainConfig) -> list[str]:
    out = []
    positive = {"--batch-size": c.batch_size, "--grad-accum": c.grad_accum, "--nproc": c.nproc,
                "--nnodes": c.nnodes, "--epochs": c.epochs, "--max-steps": c.max_steps,
                "--eval-every": c.eval_every, "--early-stopping": c.early_stopping,
                "--checkpoint-every": c.checkpoint_every, "--image-size": c.image_size, "--pause-at": c.pause_at}
    for flag, value in positive.items():
        if value is not None and value < 1:
            out.append(f"{flag} {value} must be at least 1")
    if c.epochs is not None and c.max_steps is not None:
        out.append("give --epochs or --max-steps, not both")
    if not 0 <= c.warmup < 1:
        out.append(f"--warmup {c.warmup} is a fraction of the steps; give a value in [0, 1)")
    if c.lr <= 0:
        out.append(f"--lr {c.lr} must be positive")
    if not 0 < c.val_fraction < 1:
        out.append(f"val_fraction {c.val_fraction} must be in (0, 1)")
    return out


def _check_lengths(c: TrainConfig) -> list[str]:
    out = []
    world = c.nproc * c.nnodes
    if c.batch_size >= 1 and world >= 1 and c.batch_size % world:
        out.append(f"--batch-size {c.batch_size} is the global batch and must divide evenly over "
                   f"{world} processes; use a multiple of {world}")
    limit, kind = device_slots()
    if kind == "GPUs" and c.nproc > limit:
        out.append(f"--nproc {c.nproc} is more than the {limit} {kind} of this machine; use --nproc {limit} or fewer")
    elif c.nproc > limit * CPU_OVERSUBSCRIPTION:
        out.append(f"--nproc {c.nproc} is more than the {limit * CPU_OVERSUBSCRIPTION} processes zoo starts on "
                   f"{limit} {kind} ({CPU_OVERSUBSCRIPTION} per core); use --nproc {limit} (or up to "
                   f"{limit * CPU_OVERSUBSCRIPTION}, sharing cores)")
    elif c.nproc > limit:
        import warnings

        from zoo.errors import ZooWarning

        # gloo runs correctly with processes sharing cores, only slower: a test of a 4-rank job on a laptop
        warnings.warn(f"--nproc {c.nproc} is more than the {limit} {kind} of this machine: the processes will share "
                      "cores, so training runs slower than with --nproc " + str(limit), ZooWarning, stacklevel=2)
    return out


def device_slots() -> tuple[int, str]:
    """How many workers this machine can host: GPUs when CUDA is present, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU cores"
