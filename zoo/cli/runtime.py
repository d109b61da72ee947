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
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels to show per input (classifiers).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    no_hash_check: Annotated[bool, typer.Option("--no-hash-check",
                                                help="Check file sizes only, not sha256 (faster start).")] = False,
) -> None:
    """Run an exported model on raw inputs and print its predictions."""
    from zoo.runtime import load

    model = load(artifact, check_hashes=not no_hash_check)
    results = model.predict(list(inputs), top_k=top_k)
    if as_json:
        typer.echo(json.dumps([{"input": i, **r.to_dict()} for i, r in zip(inputs, results)], indent=2))
        return
    from rich.console import Console

    Console().print(_prediction_table(model, inputs, results))


def _prediction_table(model: Any, inputs: list[str], results: list[Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    name = escape(str(model.info.get("name", model.folder.name)))
    table = Table(title=f"{name} ({model.task})")
    if model.task.endswith("-classification") and model.task != "token-classification":
        for column in ("input", "label", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for text, result in zip(inputs, results):
            for rank, (label, score) in enumerate(zip(result.labels, result.scores)):
                table.add_row(escape(text) if rank == 0 else "", escape(label), f"{score:.4f}")
    elif model.task == "token-classification":
        for column in ("input", "entity", "label", "span", "score"):
            table.add_column(column)
        for text, result in zip(inputs, results):
            rows = result.entities or [None]
            for rank, e in enumerate(rows):
                cells = ("-", "-", "-", "-") if e is None else (escape(e.word), escape(e.label),
                                                                f"{e.start}:{e.end}", f"{e.score:.4f}")
                table.add_row(escape(text) if rank == 0 else "", *cells)
    else:
        for column in ("input", "shape", "norm", "first values"):
            table.add_column(column)
        for text, result in zip(inputs, results):
            head = ", ".join(f"{v:+.4f}" for v in result.vector.reshape(-1)[:4])
            table.add_row(escape(text), str(result.shape), f"{float((result.vector ** 2).sum()) ** 0.5:.4f}",
                          f"[{head}, ...]")
    return table


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
