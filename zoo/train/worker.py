"""The body of every training process: build, wrap, train, then rank 0 writes the run dir."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from zoo.errors import ConfigError
from zoo.spec import ModelSpec
from zoo.train.checkpoint import BASE_DIR
from zoo.train.config import TrainConfig, validate
from zoo.train.model import build_model, fresh_copy, save_base
from zoo.train.strategies import make_strategy

RUN_FILE = "run.json"
MODEL_DIR = "model"
INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130: what a shell reports for a command stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or a scheduler's SIGTERM); ``--resume --out run`` continues it from its checkpoint."""

    def __init__(self, run: Path, signum: int = signal.SIGINT):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.run, self.signum = Path(run), int(signum)


def train_and_save(config: TrainConfig, *, checked: bool, prepared: tuple[ModelSpec, Any] | None = None) -> None:
    """One process's whole run: train, then (rank 0) write the run dir. Ctrl-C raises Interrupted."""
    _set_threads()
    sigint = FirstSigint()
    try:
        with sigint:
            strategy = start_strategy(config)
            try:
                _run(config, strategy, checked, prepared)
            except Exception:
                if sigint.caught():
                    raise KeyboardInterrupt from None
                strategy.close()
                raise
    except KeyboardInterrupt:
        # no strategy.close(): leaving the group waits on peers that may be gone mid-collective
        raise Interrupted(Path(config.out)) from None
    strategy.close()


def start_strategy(config: TrainConfig) -> Any:
    """The run's strategy, started (its process group initialised); DeepSpeed's reads its options from the config."""
    if config.strategy == "deepspeed":
        from zoo.train.deepspeed import DeepSpeedStrategy

        strategy = DeepSpeedStrategy(config.precision, config.sync_batchnorm, config=config)
        strategy.setup()
        return strategy
    if config.tp > 1:  # --tp: the model split over the processes (tensor_parallel builds on strategies)
        from zoo.train.tensor_parallel import start_strategy as start_tensor_parallel

        return start_tensor_parallel(config.precision, config.tp)
    if config.pp > 1:  # --pp: one pipeline stage per process (zoo/train/pipeline.py)
        from zoo.train.pipeline import make_pipeline

        return make_pipeline(config.precision, config.pp, config.pp_schedule)
    return make_strategy(config.strategy, config.precision, sync_batchnorm=config.sync_batchnorm)


def _run(config: TrainConfig, strategy: Any, checked: bool, prepared: tuple[ModelSpec, Any] | None) -> None:
    _check_world(config, strategy, checked)
    spec, data = prepared or _prepare(config)
    torch.manual_seed(config.seed)  # every rank builds identical initial weights
    model = _build(config, spec, data)
    if config.packing and not config.resume:
        from zoo.tasks._lm_train import forward_logits
        from zoo.train.packing import check_packing

        check_packing(model, data.train, forward_logits)
    wrapped = strategy.wrap(model)
    wrapped.train()
    if strategy.is_main:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        if not config.resume:
            save_base(spec, Path(config.out) / BASE_DIR)
    strategy.barrier()
    trainer = _train(config, spec, data, wrapped, strategy)
    weights = strategy.full_state_dict(wrapped)  # a collective: every rank takes part
    if strategy.is_main and not trainer.state.paused:
        write_run_dir(config, spec, data, trainer, weights, strategy)
    strategy.barrier()


def _build(config: TrainConfig, spec: ModelSpec, data: Any) -> Any:
    """The model to train. A resumed run's checkpoint holds every weight, so nothing pretrained is loaded (or
    downloaded), except under LoRA, whose checkpoints hold the adapters only: the base's own weights come again."""
    if config.resume and config.lora_r is not None:
        from zoo.train.preflight import lora_base_spec

        return build_model(lora_base_spec(config, spec), data.plan, config)
    return build_model(spec, data.plan, config, pretrained=False if config.resume else None)


class FirstSigint:
    """While active, the first SIGINT raises KeyboardInterrupt and later ones are ignored; ``seen`` records it.

    Ctrl-C reaches every process of the terminal's process group and torch's agent then forwards
    the signal to its workers again: a second KeyboardInterrupt would land in the first's cleanup.
    Only the main thread may set signal handlers; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None

    def __enter__(self) -> FirstSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _stop(self, signum: int, frame: Any) -> None:
        self.seen = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    def caught(self) -> bool:
        """Whether Ctrl-C came: an exception may be its echo (torch's checkpoint writer wraps the
        KeyboardInterrupt in its own; a peer that stopped first breaks the collective this process
        waits in). A signal that arrived but whose handler has not run yet raises on entering here.
        """
        return self.seen


def exit_interrupted() -> None:
    """End a worker stopped by Ctrl-C: exit code 130, no traceback, no teardown of the broken process group."""
    sys.stdout.flush()
    sys.stderr.flush()
    # skipping interpreter teardown also skips c10d's warnings about collectives cut short
    os._exit(INTERRUPTED_EXIT)


def _set_threads() -> None:
    # torchrun sets OMP_NUM_THREADS=1 for multi-process runs; do the same split of the cores here
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local))


def _check_world(config: TrainConfig, strategy: Any, checked: bool) -> None:
    if not checked:  # started by an outside torchrun: every rank checks, before anyone writes
        validate(config)
        from zoo.train.preflight import check_out

        check_out(config)
    if strategy.world_size > 1 and strategy.name == "single":
        raise ConfigError(f"{strategy.world_size} processes were started but --strategy is single; "
                          "use --strategy ddp or fsdp")
    if config.batch_size % strategy.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                          f"{strategy.world_size} processes; use a multiple of {strategy.world_size}")
    strategy.barrier()


def _prepare(config: TrainConfig) -> tuple[ModelSpec, Any]:
    from zoo.train.preflight import prepare

    return prepare(config)


def _train(config: TrainConfig, spec: ModelSpec, data: Any, model: torch.nn.Module, strategy: Any) -> Any:
    """Train to the end (or the pause); with ``--keep best`` the model then holds the best step's weights."""
    from zoo.tasks import get_task
    from zoo.train.loop import Trainer, fit

    runner = get_task(spec.task).training_module(model, spec)
    trainer_class = getattr(strategy, "trainer_class", Trainer)  # --pp: the schedule runs each step
    trainer = trainer_class(model, runner, strategy, data, config, Path(config.out), spec)
    if config.resume:
        trainer.resume()
    fit(trainer)
    if not trainer.state.paused:
        trainer.restore_kept()
    return trainer


def run_spec(spec: ModelSpec, labels: tuple[str, ...], out: Path) -> ModelSpec:
    """The fine-tuned model's spec as run.json stores it (resolve adds local_path <run>/model)."""
    return dataclasses.replace(spec, name=out.name, labels=tuple(labels), origin="run", local_path=None,
                               description=f"{spec.description} fine-tuned by zoo ({out.name})".strip())


def write_run_dir(config: TrainConfig, spec: ModelSpec, data: Any, trainer: Any,
                  weights: dict[str, torch.Tensor], strategy: Any) -> None:
    from zoo import sources
    from zoo.train.report import MetricsLog, plot_curves
    from zoo.versions import library_versions

    out, state = Path(config.out), trainer.state
    fresh = fresh_copy(spec, data.plan, config)
    fresh.load_state_dict(weights)
    if config.lora_r is not None:
        fresh = _adapter_and_merge(fresh, spec, data, out)
    # the generation settings the training data assumed (Whisper: its labels' language and task)
    for key, value in getattr(data.train, "generation_defaults", {}).items():
        setattr(fresh.generation_config, key, value)
    final = run_spec(spec, data.labels, out)
    # save with the base's local_path: the tokenizer / preprocessor files are copied from there
    saving = dataclasses.replace(final, local_path=spec.local_path)
    sources.for_spec(spec).save_model(fresh, saving, out / MODEL_DIR, model_args=_model_args(spec, config))
    plot_curves(MetricsLog(out / "metrics.jsonl", True).read(), out / "curves.png", trainer.metric)
    record = {
        "spec": final.to_dict(), "model_dir": MODEL_DIR,
        "model": {"step": trainer.kept_step, "keep": config.keep, "metric": trainer.metric},
        "base": {"name": config.model, "source": spec.source_name, "local_path": spec.local_path},
        "data": data.info(), "config": config.to_dict(), "world_size": strategy.world_size,
        "strategy": strategy.name, "sync_batchnorm": strategy.synced_batchnorm,
        "steps": state.step, "stopped_early": state.stopped_early,
        "metrics": {"final": state.last, "best": {**state.best, "step": state.best_step}},
        "timing": trainer.timing(), "versions": library_versions(),
    }
    (out / RUN_FILE).write_text(json.dumps(record, indent=2))


def _adapter_and_merge(model: Any, spec: ModelSpec, data: Any, out: Path) -> Any:
    """Write the LoRA adapter (peft's folder), then return the merged model, checked against the adapted one."""
    from zoo.tasks import get_task
    from zoo.train.lora import ADAPTER_DIR, merge

    model.save_pretrained(out / ADAPTER_DIR)  # before merging, which takes the adapter layers out
    batch = data.val.batch(list(range(min(4, len(data.val)))))
    return merge(model, get_task(spec.task).training_inputs(spec, batch))


def _model_args(spec: ModelSpec, config: TrainConfig) -> dict[str, Any]:
    """Constructor arguments a timm folder must carry to be rebuilt (a fixed input size, shrunk depth)."""
    args = dict(config.model_kwargs)
    if spec.source == "timm" and config.image_size and _fixed_input_size(spec):
        args["img_size"] = list(spec.preprocess.input_size[1:])
    return args


def _fixed_input_size(spec: ModelSpec) -> bool:
    import timm

    arch = spec.arch or spec.source_id
    return bool(timm.models.get_pretrained_cfg_value(arch, "fixed_input_size"))
