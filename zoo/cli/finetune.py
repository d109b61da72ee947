"""``zoo finetune``: fine-tune a model on your data, in one process or many.

    zoo finetune timm:test_resnet --random-init --data builtin:digits --strategy ddp --nproc 2 \\
        --image-size 32 --epochs 2 --out runs/digits
    zoo finetune --resume --out runs/digits
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:PORT -m zoo finetune bert-base \\
        --data train.csv --strategy fsdp --precision bf16 --out runs/bert

The flags are generated from ``zoo.train.config.TrainConfig`` (one definition for
the CLI, ``zoo.finetune`` and validation). Every flag defaults to "not given", so
``--resume`` can tell an option given again from one left to the run's stored value.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app, state
from zoo.train import config as options


@cache
def _choice_enum(name: str, choices: tuple[str, ...]) -> type[Enum]:
    return Enum(name, [(c.replace("-", "_"), c) for c in choices], type=str)  # type: ignore[return-value]


def _base_type(name: str) -> type:
    hint = typing.get_type_hints(options.TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _parameter(field: Any) -> inspect.Parameter:
    meta = options.meta(field)
    kind: Any = _base_type(field.name)
    choices = meta.valid_choices()
    if choices is not None:
        kind = _choice_enum(field.name.title().replace("_", ""), choices)
    flag = meta.flag or "--" + field.name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    default = field.default
    shown = f" (default {default})" if default not in (None, "", (), False) and not callable(default) else ""
    info = typer.Option(*decls, help=meta.help + shown, rich_help_panel=meta.group, show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, info])


def _parameters() -> list[inspect.Parameter]:
    name = inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Argument(help="Alias, hf:ORG/NAME, timm:ARCH or a model folder (not needed with "
                                        "--resume).", show_default=False)])
    as_json = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="Print the run's summary as JSON.")])
    return [name, *(_parameter(f) for f in options.options() if options.meta(f).cli), as_json]


def finetune_command(**values: Any) -> None:
    """Fine-tune NAME on --data; write weights in the model's own format plus run.json to --out."""
    from zoo.train.finetune import finetune
    from zoo.train.launch import WorkerFailed
    from zoo.train.worker import Interrupted

    name, as_json = values.pop("name"), values.pop("as_json")
    try:
        run = finetune(name or "", **given_options(values), registries=tuple(state.registries))
    except WorkerFailed as exc:
        if state.debug:
            typer.echo(exc.worker_traceback, err=True)
        raise
    except Interrupted as exc:
        if _reporting_rank():
            for line in _interrupted(exc.run):
                typer.echo(line, err=True)
        raise typer.Exit(128 + exc.signum) from None
    _report(run, as_json)


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line, as ``zoo.finetune`` keywords (the choices as plain strings)."""
    return {k: v.value if isinstance(v, Enum) else v for k, v in values.items() if v is not None}


_PARAMETERS = _parameters()
finetune_command.__signature__ = inspect.Signature(_PARAMETERS)  # type: ignore[attr-defined]
finetune_command.__annotations__ = {p.name: p.annotation for p in _PARAMETERS}
app.command("finetune")(finetune_command)


# ---------------------------------------------------------------- the end-of-run summary


def _reporting_rank() -> bool:
    # under an outside torchrun every rank runs this command: rank 0 alone reports
    return os.environ.get("RANK", "0") == "0"


def _report(run: Path, as_json: bool) -> None:
    if not _reporting_rank():
        return
    record_file = run / "run.json"
    summary = _finished(run, json.loads(record_file.read_text())) if record_file.is_file() else _paused(run)
    if as_json:
        typer.echo(json.dumps(summary["json"], indent=2))
    else:
        for line in summary["lines"]:
            typer.echo(line)


def _finished(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    final, best, kept = record["metrics"]["final"], record["metrics"]["best"], record["model"]
    metric = kept["metric"].removeprefix("val_")
    timing, data = record["timing"], record["data"]
    shown = ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in final.items())
    head = "a new head" if data.get("new_head") else "the model's head kept"
    lines = [
        f"run dir: {run}",
        *([f"labels: {len(data['labels'])} from {data['label_source']}, {head}"] if data["labels"] else []),
        f"validation (final, step {record['steps']}): {shown}",
        (f"best {metric} {best.get(kept['metric'], float('nan')):.4f} at step {best.get('step')}"
         f"{_checkpoint_of(run, best.get('step'))}; "
         f"{run / record['model_dir']} holds step {kept['step']} (--keep {kept['keep']})"),
        (f"time: {timing['elapsed_s']:.1f} s, {timing['samples_per_s']:.1f} training samples/s "
         f"({timing['samples']} samples in {timing['steps']} steps)"),
    ]
    payload = {"run": str(run), **record["metrics"], "model": kept, "timing": timing}
    return {"lines": lines, "json": payload}


def _checkpoint_of(run: Path, step: int | None) -> str:
    from zoo.train.checkpoint import MARKER, PREFIX, checkpoint_dir

    folder = checkpoint_dir(run) / f"{PREFIX}{step}"
    return f" (checkpoint {folder})" if (folder / MARKER).is_file() else ""


def _paused(run: Path) -> dict[str, Any]:
    from zoo.train.checkpoint import latest_checkpoint, read_trainer

    folder = latest_checkpoint(run)
    saved = read_trainer(folder)
    step, total = saved["state"]["step"], saved.get("total_steps")
    command = f"zoo finetune --resume --out {run}"
    lines = [f"paused at step {step}" + (f" of {total}" if total else "") + f"; checkpoint: {folder}",
             f"continue with: {command}"]
    return {"lines": lines, "json": {"run": str(run), "paused_at": step, "checkpoint": str(folder),
                                     "continue": command}}


def _interrupted(run: Path) -> list[str]:
    """What Ctrl-C leaves: the command that continues from the last complete checkpoint, or why there is none."""
    from zoo.train.checkpoint import complete_checkpoints, read_trainer

    found = complete_checkpoints(run)
    if not found:
        if run.exists():
            return [f"interrupted before the first checkpoint: {run} holds nothing to resume; remove it or give "
                    "another --out to start again"]
        return ["interrupted before the run started"]
    step = read_trainer(found[-1])["state"]["step"]
    return [f"interrupted; {run} holds a checkpoint at step {step}",
            f"continue with: zoo finetune --resume --out {run}"]
