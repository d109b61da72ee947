"""``zoo optimize``: a faster artifact (fused, int8, int8-static, fp16, openvino, bf16) that must pass the gates.

    zoo optimize artifacts/minilm --out artifacts/minilm-int8 --level int8
    zoo optimize artifacts/digits --level auto --eval-data builtin:digits --max-drop 0.5 --json
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app
from zoo.cli.stages import StageProgress
from zoo.errors import GateError


class Level(str, Enum):
    fused = "fused"
    int8 = "int8"
    int8_static = "int8-static"
    fp16 = "fp16"
    int8_weights = "int8-weights"
    int4 = "int4"
    openvino = "openvino"
    bf16 = "bf16"
    auto = "auto"


@app.command("optimize")
def optimize(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the optimised artifact (default: ARTIFACT-LEVEL).")] = None,
    level: Annotated[Level, typer.Option(help="fused: graph fusions, exact; int8: dynamic (transformers); "
                                              "int8-static: calibrated QDQ (CNNs); fp16: CUDA only; openvino: the "
                                              "same graph on OpenVINO, float32; bf16: OpenVINO computing in bf16 "
                                              "(CPUs with avx512_bf16 or amx_bf16); int8-weights, int4: weight-only "
                                              "(text generation); auto: the fastest level that passes on this "
                                              "machine.")] = Level.auto,
    eval_data: Annotated[str | None, typer.Option(
        help="Data to judge (and calibrate) on: a .txt file of sentences, or what 'zoo finetune --data' reads; "
             "labelled rows also measure the accuracy drop.")] = None,
    max_drop: Annotated[float, typer.Option(help="Largest accuracy drop allowed, in percentage points.")] = 0.5,
    max_ppl_increase: Annotated[float | None, typer.Option(
        help="Text generation: largest perplexity rise allowed, in percent (default 2 for int8-weights, "
             "10 for int4).")] = None,
    keep_failed: Annotated[Path | None, typer.Option(
        help="On a refusal, keep the refused graphs (LEVEL.onnx) and the gate report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Optimise ARTIFACT into a new artifact, written only if it keeps the model's accuracy and runs faster."""
    from exporters.optimize import optimize as run_optimize

    try:
        with StageProgress("zoo optimize", quiet=as_json) as step:
            result = run_optimize(artifact, out=out, level=level.value, eval_data=eval_data, max_drop=max_drop,
                                  keep_failed=keep_failed, progress=step, max_ppl_increase=max_ppl_increase)
    except GateError as exc:
        show_refusal(exc, as_json)
        raise
    show_result(result, as_json)


def show_result(result: Any, as_json: bool) -> None:
    """The gate table, what was tried, and the speed-up (or all of it as JSON)."""
    if as_json:
        record = result.manifest.optimization
        typer.echo(json.dumps({"path": str(result.path), "level": result.level, "tried": result.tried,
                               "notes": result.notes, **{k: record[k] for k in ("parent", "recipe", "gates")}},
                              indent=2))
        return
    from rich.console import Console

    console = Console()
    for note in result.notes:
        console.print(f"[bold yellow]warning:[/bold yellow] {note}")
    if len(result.tried) > 1:
        console.print(tried_table(result))
    console.print(result.report.table())  # compact when it passed: check, result, figure
    speed = ", ".join(f"{f.shape}: {f.speedup:.2f}x ({f.parent_ms:.1f} -> {f.optimized_ms:.1f} ms)"
                      for f in result.speed)
    console.print(f"optimised artifact ({result.level}): {result.path}\nspeed-up over the parent: {speed}")


def tried_table(result: Any) -> Any:
    """What auto tried: level, engine, speed at each shape against the parent and eager torch, the accuracy
    figure, and the verdict; the CPU's model and flags in the title (times in ms are in --json)."""
    from rich.markup import escape
    from rich.table import Table

    cpu = result.manifest.optimization.get("cpu", {})
    table = Table(title=f"tried on {escape(cpu.get('model', 'this CPU'))} "
                        f"({', '.join(cpu.get('flags', [])) or 'no AVX2, AVX-512 or AMX'})")
    for column in ("level", "engine", "vs parent", "vs torch fp32 eager", "accuracy", "result"):
        table.add_column(column)
    for t in result.tried:
        engine = t["engine"]
        parent = ", ".join(f"{s['shape']}: {s['parent_ms'] / s['optimized_ms']:.2f}x" for s in t["speed"])
        torch = ", ".join(f"{s['shape']}: {s['torch_ms'] / s['optimized_ms']:.2f}x" for s in t["speed"]
                          if s.get("torch_ms") is not None)
        verdict = ("kept" if t["level"] == result.level else "passed") if t["passed"] else \
            f"not tried: {t['skipped']}" if t.get("skipped") else \
            f"refused: {t['failed'][0]}" if t["failed"] else "refused"
        table.add_row(t["level"], f"{engine['name']} {engine['precision']}", parent or "not timed", torch,
                      escape(t.get("accuracy") or ""), escape(verdict))
    return table


def show_refusal(exc: GateError, as_json: bool) -> None:
    if exc.report is None:
        return
    if as_json:
        typer.echo(json.dumps({"refused": True, **exc.report.to_dict()}, indent=2))
        return
    from rich.console import Console

    Console(stderr=True).print(exc.report.table(compact=False))
