"""``zoo predict`` and ``zoo bench``: run an exported artifact without torch.

    zoo predict artifacts/sst2 "I loved it" "Dreadful" --top-k 2
    zoo predict artifacts/resnet cat.jpg dog.png --json
    zoo bench artifacts/minilm --batch-sizes 1,8 --iterations 50 --vs-torch
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app
from zoo.errors import ConfigError


@app.command("predict")
def predict(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    inputs: Annotated[list[str], typer.Argument(help="Text strings (text models) or image paths (image models).")],
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1,
                                              help="Labels to show per input (classifiers; default 1).")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Keep detections scoring at least this (object detection; default: the artifact's).")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Folder to write pictures of the predictions into (object detection: boxes and labels).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    no_hash_check: Annotated[bool, typer.Option("--no-hash-check",
                                                help="Check file sizes only, not sha256 (faster start).")] = False,
) -> None:
    """Run an exported model on raw inputs and print its predictions."""
    from zoo.runtime import load
    from zoo.tasks import get_task

    model = load(artifact, check_hashes=not no_hash_check)
    given = {"top_k": top_k, "threshold": threshold}
    results = model.predict(list(inputs), **{k: v for k, v in given.items() if v is not None})
    saved = get_task(model.task).save_pictures(list(inputs), results, save) if save is not None else []
    if as_json:
        typer.echo(json.dumps([{"input": i, **r.to_dict()} for i, r in zip(inputs, results)], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape

    title = f"{escape(model.manifest.name)} ({model.task})"
    console = Console()
    console.print(get_task(model.task).render(title, list(inputs), results))
    for path in saved:
        console.print(f"saved {escape(str(path))}")


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes '{text}' is not a comma-separated list of positive integers; "
                          "write e.g. --batch-sizes 1,8,32")
    return sizes


@app.command("bench")
def bench(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    iterations: Annotated[int, typer.Option("--iterations", "-n", min=1, help="Timed runs per batch size.")] = 50,
    vs_torch: Annotated[bool, typer.Option("--vs-torch", help="Also time the source model in eager PyTorch "
                                           "(needs zoo-toolkit\\[train]).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads for both "
                                                "engines (default: each engine's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Latency (p50/p90/p99) and throughput of an artifact per batch size, after warm-up."""
    from zoo.runtime import load
    from zoo.runtime.bench import bench as run_bench

    sizes = _batch_sizes(batch_sizes)
    model = load(artifact, threads=threads)
    report = run_bench(model, batch_sizes=sizes, iterations=iterations, vs_torch=vs_torch, threads=threads)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_bench(report)


def _print_bench(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(report.name)} ({report.task}) on {', '.join(report.providers)}, "
                        f"{report.iterations} runs")
    for column in ("batch", "engine", "p50 ms", "p90 ms", "p99 ms", "inputs/s", "speed-up"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for t in report.timings:
        ratio = report.speedup(t.batch_size) if t.engine == "onnxruntime" else None
        table.add_row(str(t.batch_size), t.engine, f"{t.p50_ms:.2f}", f"{t.p90_ms:.2f}", f"{t.p99_ms:.2f}",
                      f"{t.throughput:.1f}", f"{ratio:.2f}x" if ratio else "")
    console = Console()
    console.print(table)
    if report.torch_note:
        console.print(f"torch: {escape(report.torch_note)}; speed-up = torch p50 / onnxruntime p50")
