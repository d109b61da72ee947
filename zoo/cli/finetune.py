"""``zoo finetune``: fine-tune a model on your data, in one process or many.

    zoo finetune timm:test_resnet --random-init --data builtin:digits --strategy ddp --nproc 2 \\
        --image-size 32 --epochs 2 --out runs/digits
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:PORT -m zoo finetune bert-base \\
        --data train.csv --strategy fsdp --precision bf16 --out runs/bert
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from zoo.cli.app import app, state


class StrategyChoice(str, Enum):
    single = "single"
    ddp = "ddp"
    fsdp = "fsdp"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def _eval_every(value: str) -> int | None:
    if value == "epoch":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"'{value}' is neither 'epoch' nor a number of steps") from None


@app.command("finetune")
def finetune_command(
    name: Annotated[str, typer.Argument(help="Alias, hf:ORG/NAME, timm:ARCH or a model folder.")],
    data: Annotated[str, typer.Option(help="CSV/JSON/JSONL/Parquet file, imagefolder or save_to_disk folder, "
                                           "hub data set name, or builtin:digits.")],
    strategy: Annotated[StrategyChoice, typer.Option(help="single, ddp or fsdp (FSDP2).")] = StrategyChoice.single,
    nproc: Annotated[int, typer.Option(help="Processes on this node (> 1 launches torch's elastic launcher).")] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes in the job (multi-node needs --rdzv-endpoint).")] = 1,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the rendezvous.")] = None,
    rdzv_id: Annotated[str | None, typer.Option(help="Job id shared by all nodes.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training data (default 3).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps instead of --epochs.")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch per micro-step, over all processes.")] = 32,
    grad_accum: Annotated[int, typer.Option(help="Micro-steps per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-4,
    warmup: Annotated[float, typer.Option(help="Warmup as a fraction of all steps (then cosine decay).")] = 0.1,
    precision: Annotated[PrecisionChoice, typer.Option(help="fp32 or bf16 (fp16: single/ddp only).")] =
        PrecisionChoice.fp32,
    seed: Annotated[int, typer.Option(help="Seed of weights, data order and dropout.")] = 0,
    eval_every: Annotated[str, typer.Option(help="'epoch' or a number of steps.")] = "epoch",
    early_stopping: Annotated[int | None, typer.Option(help="Stop after P evaluations without a better "
                                                            "validation loss.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints (default: at each "
                                                              "evaluation).")] = None,
    pause_at: Annotated[int | None, typer.Option(help="Stop after this step with a checkpoint; continue "
                                                      "later with --resume.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run dir (default runs/NAME-TIME).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest complete checkpoint in --out.")] = False,
    random_init: Annotated[bool, typer.Option(help="Random weights instead of pretrained ones.")] = False,
    text_column: Annotated[str | None, typer.Option(help="Input column (text, words or image).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label (or tag) column.")] = None,
    split: Annotated[str | None, typer.Option(help="Training split (default train).")] = None,
    val_data: Annotated[str | None, typer.Option(help="Validation file (default: a validation split, "
                                                      "else a seeded 10% of the training data).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Train images at this size instead of the "
                                                        "model's own.")] = None,
    max_length: Annotated[int, typer.Option(help="Longest token sequence for text.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Print run.json's metrics as JSON.")] = False,
) -> None:
    """Fine-tune NAME on --data; write weights in the model's own format plus run.json to --out."""
    from zoo.train.finetune import finetune

    run = finetune(
        name, data, out=out, strategy=strategy.value, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, warmup=warmup, precision=precision.value, seed=seed, eval_every=_eval_every(eval_every),
        early_stopping=early_stopping, checkpoint_every=checkpoint_every, pause_at=pause_at, resume=resume,
        random_init=random_init, text_column=text_column, label_column=label_column, split=split,
        val_data=val_data, image_size=image_size, max_length=max_length, registries=tuple(state.registries))
    _report(run, as_json)


def _report(run: Path, as_json: bool) -> None:
    import os

    record_file = run / "run.json"
    # under an outside torchrun every rank runs this command: rank 0 alone reports; a paused run has no run.json
    if os.environ.get("RANK", "0") != "0" or not record_file.is_file():
        return
    record = json.loads(record_file.read_text())
    if as_json:
        typer.echo(json.dumps({"run": str(run), **record["metrics"]}, indent=2))
        return
    final, best = record["metrics"]["final"], record["metrics"]["best"]
    shown = ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in final.items())
    typer.echo(f"run dir: {run}")
    typer.echo(f"validation (final, step {record['steps']}): {shown}")
    typer.echo(f"best validation loss {best.get('val_loss', float('nan')):.4f} at step {best.get('step')}")
