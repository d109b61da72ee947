"""Every fine-tuning option, defined once: ``TrainConfig``'s fields.

Each field carries its help text, its group, its choices or limits and whether a
resumed run may change it (``Option`` metadata). From these fields come the
``zoo finetune`` flags (zoo/cli/finetune.py), the keyword arguments and help of
``zoo.finetune``, validation, and the config every worker process receives and
``run.json`` records. Adding an option is adding one field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import ConfigError

STRATEGIES = ("single", "ddp", "fsdp")
STRATEGIES += ("deepspeed",)
# strategies users come with that PyTorch itself now covers: refused with what to use instead
REPLACED_STRATEGIES = {
    "horovod": "Horovod's allreduce data parallelism is what DDP does (a full replica per rank, gradients "
               "all-reduced); use --strategy ddp",
    "fairscale": "FairScale's sharded data parallelism was upstreamed into PyTorch as FSDP; use --strategy fsdp "
                 "(or --strategy deepspeed for ZeRO stages and CPU offload)",
}
ZERO_STAGES = (1, 2, 3)
OFFLOADS = ("none", "optimizer", "params")
PP_SCHEDULES = ("gpipe", "1f1b")
CPU_OVERSUBSCRIPTION = 4  # CPU processes per core beyond which --nproc is surely a typo
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("cosine", "linear", "constant")
KEEP = ("best", "last")

MODEL, DATA, TRAIN, EVAL, PROCESSES = "Model", "Data", "Training", "Evaluation and checkpoints", "Processes"


def trainable_tasks() -> tuple[str, ...]:
    from zoo.tasks import all_tasks

    return tuple(t.name for t in all_tasks() if t.trainable)


@dataclass(frozen=True)
class Option:
    """What one field means to the CLI, the API and validation."""

    help: str
    group: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    low: float | None = None  # smallest valid value (``low_open``: the bound itself is invalid)
    high: float | None = None  # ``high`` itself is never valid
    low_open: bool = False
    cli: bool = True  # False: Python API only (dicts, internal switches)
    flag: str | None = None  # the CLI flag when it is not --field-name
    # fixed: the run's stored value holds; free: may change when resuming (else the stored value);
    # once: applies to one invocation only (a resumed run starts from the default unless given again)
    on_resume: str = "fixed"

    def valid_choices(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any, help: str, group: str, **meta: Any) -> Any:
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"zoo": Option(help, group, **meta)}, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    model: str = option("", "Alias, hf:ORG/NAME, timm:ARCH or a model folder.", MODEL, cli=False)
    data: str = option("", "CSV/TSV/JSON/JSONL/Parquet file, imagefolder or save_to_disk folder, hub data set "
                           "name, or builtin:digits.", DATA)
    out: str = option("", "Run dir (default runs/NAME-TIME).", MODEL, on_resume="free")
    task: str | None = option(None, "Train this task's head on the model (e.g. token-classification on a plain "
                                    "encoder or embedding folder); default: the model's own task.", MODEL,
                              choices=trainable_tasks)
    new_head: bool = option(False, "Train a new head on the data's labels even where they match the model's "
                                   "(default: keep the model's head and label order when the data's labels "
                                   "are among them).", MODEL)
    random_init: bool = option(False, "Random weights instead of pretrained ones (a smoke test).", MODEL)
    text_column: str | None = option(None, "Input column (text, words or image).", DATA)
    label_column: str | None = option(None, "Label (or tag) column.", DATA)
    split: str | None = option(None, "Training split (default train).", DATA)
    val_data: str | None = option(None, "Validation file (default: the data's validation split, else a seeded "
                                        "share of the training data).", DATA)
    val_fraction: float = option(0.1, "Share of the training data held out when there is no validation split.",
                                 DATA, low=0, high=1, low_open=True)
    image_size: int | None = option(None, "Train images at this size instead of the model's own.", DATA, low=1)
    max_length: int = option(128, "Longest token sequence for text.", DATA, low=1)
    packing: bool = option(False, "text-generation: pack several training examples into each --max-length row "
                                  "(attention stays inside each example).", DATA)
    epochs: int | None = option(None, "Passes over the training data (default 3).", TRAIN, low=1)
    max_steps: int | None = option(None, "Optimizer steps instead of --epochs.", TRAIN, low=1)
    batch_size: int = option(32, "Global batch per micro-step, summed over all processes.", TRAIN, low=1)
    grad_accum: int = option(1, "Micro-steps per optimizer step (gradient accumulation).", TRAIN, low=1)
    lr: float = option(5e-4, "Peak AdamW learning rate.", TRAIN, low=0, low_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norm scales).", TRAIN, low=0)
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value; 0 turns clipping off.",
                                  TRAIN, low=0)
    warmup: float = option(0.1, "Linear warmup over this fraction of all optimizer steps.", TRAIN, low=0, high=1)
    scheduler: str = option("cosine", "Learning rate after warmup: cosine decay to 0, linear decay to 0, "
                                      "or constant.", TRAIN, choices=SCHEDULERS)
    precision: str = option("fp32", "fp32, or bf16 / fp16 compute with fp32 master weights (fp16: single "
                                     "and ddp only).", TRAIN, choices=PRECISIONS)
    seed: int = option(0, "Seed of weights, data order and dropout.", TRAIN)
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, "
                                                 "about a third more compute.", TRAIN)
    lora_r: int | None = option(None, "text-generation: train LoRA adapters of this rank instead of every weight "
                                      "(the run dir holds the adapter and the merged model).", TRAIN, low=1)
    lora_alpha: float = option(16.0, "LoRA scaling numerator: the update is alpha / r * B @ A.", TRAIN, low=0,
                               low_open=True)
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch's input.", TRAIN, low=0, high=1)
    lora_targets: str | None = option(None, "Comma-separated module names that get adapters (e.g. q_proj,v_proj), "
                                            "or all-linear (default: peft's choice for the architecture).", TRAIN)
    eval_every: int | None = option(None, "Optimizer steps between evaluations (default: every epoch).", EVAL,
                                    low=1)
    metric: str | None = option(None, "Validation metric that picks the best step and drives early stopping "
                                      "(default: the task's own, e.g. accuracy or f1).", EVAL)
    keep: str = option("best", "Weights written to model/: the best step by --metric, or the last step.", EVAL,
                       choices=KEEP)
    early_stopping: int | None = option(None, "Stop after this many evaluations without a better --metric.",
                                        EVAL, low=1)
    checkpoint_every: int | None = option(None, "Steps between checkpoints (default: at each evaluation).", EVAL,
                                          low=1, on_resume="free")
    save_total_limit: int = option(2, "Newest checkpoints kept (the best one is kept besides).", EVAL, low=1,
                                   on_resume="free")
    resume: bool = option(False, "Continue the run in --out from its latest complete checkpoint, with its "
                                 "stored options.", EVAL, on_resume="free")
    pause_at: int | None = option(None, "Stop after this step with a checkpoint; continue later with --resume.",
                                  EVAL, low=1, on_resume="once")
    strategy: str = option("single", "single, ddp, fsdp (FSDP2) or deepspeed (ZeRO); horovod and fairscale "
                                     "name what to use instead.", PROCESSES,
                           choices=STRATEGIES + tuple(REPLACED_STRATEGIES), on_resume="free")
    zero_stage: int | None = option(None, "--strategy deepspeed: ZeRO stage 1 (shard optimizer state), 2 (and "
                                          "gradients) or 3 (and parameters); default 2.", PROCESSES)
    offload: str | None = option(None, "--strategy deepspeed: keep the optimizer state (optimizer) or also the "
                                       "parameters (params, ZeRO-3 only) in CPU memory; default none.", PROCESSES,
                                 choices=OFFLOADS)
    nproc: int = option(1, "Processes on this node (> 1 starts torch's elastic launcher).", PROCESSES, low=1,
                        on_resume="free")
    nnodes: int = option(1, "Nodes in the job (multi-node needs --rdzv-endpoint).", PROCESSES, low=1,
                         on_resume="free")
    rdzv_endpoint: str | None = option(None, "HOST:PORT of the rendezvous.", PROCESSES, on_resume="free")
    rdzv_id: str | None = option(None, "Job id shared by all nodes.", PROCESSES, on_resume="free")
    tp: int = option(1, "text-generation: split each decoder layer's attention and MLP projections over this "
                        "many processes (tensor parallelism); --nproc the same number, or a multiple of it to shard the data "
                        "dimension with FSDP over the groups (a 2-D mesh).", PROCESSES, low=1)
    pp: int = option(1, "Pipeline stages: split a causal LM at decoder layers over this many processes, one stage "
                        "each (with --strategy ddp and --nproc equal to it).", PROCESSES, low=1)
    pp_schedule: str = option("gpipe", "Pipeline schedule of the --grad-accum micro-batches: gpipe (all forwards, "
                                       "then all backwards) or 1f1b (less activation memory; needs --grad-accum of "
                                       "at least --pp).", PROCESSES, choices=PP_SCHEDULES)
    sync_batchnorm: bool = option(True, "ddp/fsdp: batch-norm statistics over the global batch, as one process "
                                        "computes them (models without batch norm are unaffected).", PROCESSES)
    model_kwargs: dict[str, Any] = option(dict, "Constructor arguments (timm kwargs or transformers config "
                                                "overrides).", MODEL, cli=False)
    registries: tuple[str, ...] = option((), "Extra registry files.", MODEL, cli=False, on_resume="free")
    progress: bool = option(True, "Show a progress bar.", EVAL, on_resume="free")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["registries"] = list(self.registries)
        return data

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        values["registries"] = tuple(values.get("registries") or ())
        return cls(**values)

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1 or self.strategy != "single"


def options() -> list[dataclasses.Field]:
    """Every option field, in definition order."""
    return list(dataclasses.fields(TrainConfig))


def meta(f: dataclasses.Field) -> Option:
    return f.metadata["zoo"]


def flag(name: str) -> str:
    return meta(FIELDS[name]).flag or "--" + name.replace("_", "-")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def check_names(given: dict[str, Any]) -> None:
    """Unknown keyword options: one ConfigError naming the close match and where the list is."""
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        hints = [f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, FIELDS, n=1)) else u
                 for u in unknown]
        raise ConfigError(f"unknown finetune option(s): {', '.join(hints)}; see help(zoo.finetune)")


def validate(config: TrainConfig) -> None:
    """All option problems at once, before anything heavy starts."""
    problems = [*_check_fields(config), *_check_combinations(config), *_check_world(config)]
    if problems:
        raise ConfigError("; ".join(problems))


def _check_fields(c: TrainConfig) -> list[str]:
    out = []
    for f in options():
        value, m = getattr(c, f.name), meta(f)
        if value is None or isinstance(value, (bool, dict, tuple)):
            continue
        choices = m.valid_choices()
        if choices is not None and value not in choices:
            out.append(f"{flag(f.name)} {value} is unknown; valid: {', '.join(choices)}")
        elif isinstance(value, (int, float)) and not _in_range(value, m):
            out.append(f"{flag(f.name)} {value:g} {_range_text(m)}")
    return out


def _in_range(value: float, m: Option) -> bool:
    if m.low is not None and (value < m.low or (m.low_open and value == m.low)):
        return False
    return m.high is None or value < m.high


def _range_text(m: Option) -> str:
    if m.high is not None:
        return f"must be in {'(' if m.low_open else '['}{m.low:g}, {m.high:g})"
    if m.low_open:
        return f"must be more than {m.low:g}"
    return f"must be at least {m.low:g}"


def _check_combinations(c: TrainConfig) -> list[str]:
    out = []
    if c.strategy == "fsdp" and c.precision == "fp16":
        out.append("--strategy fsdp refuses --precision fp16 (fp16 needs loss scaling that sharded "
                   "training does not do here); use --precision bf16 or fp32")
    out += _check_deepspeed(c)
    if c.strategy == "single" and (c.nproc > 1 or c.nnodes > 1) and c.tp == 1:
        out.append(f"--strategy single runs one process but --nproc {c.nproc} --nnodes {c.nnodes} was given; "
                   "use --strategy ddp or fsdp")
    if c.nnodes > 1 and not c.rdzv_endpoint:
        out.append(f"--nnodes {c.nnodes} needs --rdzv-endpoint HOST:PORT (and --rdzv-id) shared by all nodes")
    lora_given = [flag(n) for n in ("lora_targets",) if getattr(c, n) is not None] + \
        [flag(n) for n in ("lora_alpha", "lora_dropout") if getattr(c, n) != FIELDS[n].default]
    if c.lora_r is None and lora_given:
        out.append(f"{', '.join(lora_given)} configure LoRA, which --lora-r RANK turns on; give --lora-r too")
    out += _check_pipeline(c)
    if c.epochs is not None and c.max_steps is not None:
        out.append("give --epochs or --max-steps, not both")
    if not c.model:
        out.append("no model given; name one (an alias, hf:ORG/NAME, timm:ARCH or a folder)")
    if not c.data:
        out.append("no --data given; name a data file, folder, hub data set or builtin:digits")
    return out


def _check_deepspeed(c: TrainConfig) -> list[str]:
    """--strategy deepspeed's own options, and the strategies that became ddp and fsdp."""
    out = []
    if c.strategy in REPLACED_STRATEGIES:
        out.append(f"--strategy {c.strategy} is not offered: {REPLACED_STRATEGIES[c.strategy]}")
    given = [flag(n) for n in ("zero_stage", "offload") if getattr(c, n) is not None]
    if c.strategy != "deepspeed":
        # a resumed DeepSpeed run keeps its stage: check_resumed_strategy says why another strategy cannot go on
        if given and not c.resume:
            out.append(f"{' and '.join(given)} {'configure' if len(given) > 1 else 'configures'} --strategy "
                       f"deepspeed but --strategy is {c.strategy}; add --strategy deepspeed or leave "
                       f"{'them' if len(given) > 1 else 'it'} out")
        return out
    if c.zero_stage is not None and c.zero_stage not in ZERO_STAGES:
        out.append(f"--zero-stage {c.zero_stage} is unknown; valid: 1 (optimizer state sharded), 2 (and gradients), "
                   "3 (and parameters)")
    if c.offload == "params" and c.zero_stage != 3:
        out.append(f"--offload params needs --zero-stage 3 (stage {c.zero_stage or 2} keeps every parameter on each "
                   "rank, so there is nothing of them to offload); add --zero-stage 3, or use --offload optimizer")
    if c.precision == "fp16":
        out.append("--strategy deepspeed refuses --precision fp16 (zoo trains DeepSpeed in fp32 or bf16 only); "
                   "use --precision bf16 or fp32")
    from importlib.util import find_spec

    if find_spec("deepspeed") is None:
        out.append("--strategy deepspeed needs the deepspeed package, which is not installed; "
                   "pip install 'zoo-toolkit[deepspeed]'")
    return out


def _check_pipeline(c: TrainConfig) -> list[str]:
    """--pp: one pipeline, one stage per process, under DDP's process group; what it does not combine with."""
    if c.pp == 1:
        return []
    out, world = [], c.nproc * c.nnodes
    if c.strategy != "ddp":
        out.append(f"--pp {c.pp} runs one pipeline stage per process under --strategy ddp's process group, not "
                   f"--strategy {c.strategy}; give --strategy ddp --nproc {c.pp}")
    if world % c.pp:
        out.append(f"--pp {c.pp} does not divide the {world} processes (--nproc x --nnodes); give --nproc {c.pp}")
    elif world != c.pp:
        out.append(f"--pp {c.pp} with {world} processes would need data parallelism beside the pipeline, which "
                   f"zoo does not do; give --nproc {c.pp} (one process per stage)")
    if c.pp_schedule == "1f1b" and c.grad_accum < c.pp:
        out.append(f"--pp-schedule 1f1b needs at least one micro-batch per stage, but --grad-accum {c.grad_accum} "
                   f"< --pp {c.pp}; give --grad-accum {c.pp} or more, or --pp-schedule gpipe")
    if c.lora_r is not None:
        out.append(f"--pp {c.pp} does not train LoRA adapters (peft wraps the model the pipeline cuts); leave "
                   "--lora-r out, or train LoRA without --pp")
    if c.precision != "fp32":
        out.append(f"--pp {c.pp} trains in fp32 only (stages exchange fp32 activations; mixed precision is not "
                   f"wired through the schedule); leave --precision {c.precision} out")
    return out


def _check_world(c: TrainConfig) -> list[str]:
    out = []
    world = max(1, c.nproc * c.nnodes // c.tp)  # --tp: the processes of one split model share each batch
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


# ---------------------------------------------------------------- resume


def resumed_config(stored: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The run's stored config with the options a resumed run may change; a contradiction is refused.

    An option given again with the run's own value is fine; one given with another
    value is a ConfigError naming each difference, so a resumed run never silently
    trains on other settings than the run it continues.
    """
    differ = [f"{flag(name)} {_shown(value)} differs from the run's {_shown(getattr(stored, name))}"
              for name, value in given.items()
              if meta(FIELDS[name]).on_resume == "fixed" and not _same(name, value, getattr(stored, name))]
    if differ:
        raise ConfigError("; ".join(differ) + ": --resume continues the run with its stored options; leave "
                          "these out, or start a new run with another --out")
    once = {f.name: f.default for f in options() if meta(f).on_resume == "once"}
    free = {name: value for name, value in given.items() if meta(FIELDS[name]).on_resume != "fixed"}
    return dataclasses.replace(stored, **{**once, **free, "resume": True})


def _same(name: str, given: Any, stored: Any) -> bool:
    if name in ("model", "data", "val_data"):
        return normalise_location(given) == normalise_location(stored)
    if isinstance(stored, float) and isinstance(given, (int, float)):
        return float(given) == stored
    return given == stored


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def normalise_location(value: Any) -> Any:
    """A model or data name as the run stores it: an existing local path becomes absolute."""
    if value is None or value == "":
        return value
    text = str(value)
    if text.startswith(("builtin:", "hf:", "timm:")):
        return text
    path = os.path.abspath(os.path.expanduser(text))
    return path if os.path.exists(path) else text
