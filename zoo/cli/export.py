"""``zoo export`` and ``zoo verify``: make a verified ONNX artifact, and re-check one later.

    zoo export ./my-bert --onnx --out artifacts/my-bert
    zoo export resnet18 --onnx --random-init --rtol 1e-2
    zoo export ./my-bert --no-fuse        # the plain graph, without onnxruntime's fusions
    zoo verify artifacts/my-bert --against-source
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app, state
from zoo.cli.runtime import EngineOption, engine_name
from zoo.cli.stages import StageProgress
from zoo.errors import VerificationError


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Alias, hf:ORG/NAME[@REV], timm:ARCH[.TAG], or a model/run folder.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format, so the default).")] = True,
    out: Annotated[Path | None, typer.Option(help="Artifact folder (default: artifacts/NAME).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the registry's, else 18).")] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance for the torch comparison.")] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance (times the largest |torch| of the output's row).")] = None,
    random_init: Annotated[bool, typer.Option("--random-init",
                                              help="Random weights: a smoke test needing no weights download.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the --random-init weights (recorded in the manifest).")] = 0,
    keep_failed: Annotated[Path | None, typer.Option(
        help="Move a failed artifact here (marked unverified) instead of deleting it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verification report as JSON.")] = False,
    no_fuse: Annotated[bool, typer.Option(
        "--no-fuse", help="Keep the plain exported graph: skip the onnxruntime fusions (attention, LayerNorm, "
                          "Gelu) that export otherwise applies and verifies.")] = False,
    optimize: Annotated[str | None, typer.Option(
        help="Then optimise the artifact at this level (fused, int8, int8-static, fp16, auto) into OUT-LEVEL; "
             "shorthand for 'zoo optimize OUT --level LEVEL'.")] = None,
) -> None:
    """Export NAME to a verified, self-contained ONNX artifact (written only if verification passes)."""
    _sleeping_torch_threads()
    from exporters.onnx import export_onnx

    if optimize is not None:
        _check_level(optimize, fused=not no_fuse)
    try:
        with StageProgress("zoo export", quiet=as_json) as step:
            result = export_onnx(name, out=out, opset=opset, atol=atol, rtol=rtol, random_init=random_init,
                                 seed=seed, keep_failed=keep_failed, registries=state.registries, progress=step,
                                 fuse=not no_fuse)
    except VerificationError as exc:
        _show(exc.report, as_json, path=None)
        raise
    _show(result.report, as_json and optimize is None, path=result.path, exporter=result.exporter,
          graph=(result.manifest.graph or {}).get("form"))
    if optimize is not None:
        from zoo.cli.optimize import Level
        from zoo.cli.optimize import optimize as optimize_command

        optimize_command(result.path, out=result.path.parent / f"{result.path.name}-{optimize}",
                         level=Level(optimize), eval_data=None, max_drop=0.5, keep_failed=None,
                         as_json=as_json)


def _sleeping_torch_threads() -> None:
    """torch's OpenMP worker threads wait for work asleep instead of spinning, unless OMP_WAIT_POLICY is set.

    Export runs torch in short bursts (a forward per grid case) between single-threaded
    stretches, and libgomp's default spin-wait keeps a worker burning a core after each
    parallel op; on a loaded machine the spinning worker also competes with the thread it
    waits for. MiniLM's 9 reference forwards took 3 to 4 s CPU that way at load average 5,
    ~1 s asleep. libgomp reads the variable once, when torch loads it: the command sets it
    before anything imports torch.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _check_level(level: str, *, fused: bool) -> None:
    """Before the (long) export starts, so a typo costs nothing."""
    from exporters.optimize import LEVELS
    from zoo.errors import ConfigError

    if level not in LEVELS:
        raise ConfigError(f"--optimize {level!r} is not one of {', '.join(LEVELS)}; e.g. --optimize int8")
    if level == "fused" and fused:
        raise ConfigError("--optimize fused: zoo export writes the fused graph by default already; drop "
                          "--optimize, or use --optimize int8 / auto for a faster one")


@app.command("verify")
def verify(
    folder: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    against_source: Annotated[bool, typer.Option(
        "--against-source", help="Also rebuild the source model and re-run the torch comparison.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    engine: EngineOption = None,
) -> None:
    """Re-check an artifact: file hashes, onnx.checker, dynamic axes, golden data through its engine."""
    from exporters.verify import verify_artifact

    try:
        report = verify_artifact(folder, against_source=against_source, engine=engine_name(engine))
    except VerificationError as exc:
        _show(exc.report, as_json, path=None)
        raise
    _show(report, as_json, path=folder)


def _show(report: Any, as_json: bool, path: Path | None, exporter: str | None = None,
          graph: str | None = None) -> None:
    if report is None:
        return
    if as_json:
        data = report.to_dict()
        if path is not None:
            data = {"path": str(path), **({"exporter": exporter} if exporter else {}),
                    **({"graph": graph} if graph else {}), **data}
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console

    # failures go to stderr beside the one-line error; successes to stdout
    console = Console(stderr=not report.passed)
    console.print(report.table())
    if path is not None:
        details = [f"exporter: {exporter}"] * bool(exporter) + [f"{graph} graph"] * bool(graph)
        console.print(f"artifact: {path}" + (f" ({', '.join(details)})" if details else ""))
