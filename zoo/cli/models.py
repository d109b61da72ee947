"""``zoo list`` and ``zoo info``: what the registry holds and what a name resolves to."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app, out_console, state
from zoo.spec import SOURCES, TASKS, ModelSpec

TaskChoice = Enum("TaskChoice", {t.replace("-", "_"): t for t in TASKS}, type=str)  # type: ignore[misc]
SourceChoice = Enum("SourceChoice", {s: s for s in SOURCES}, type=str)  # type: ignore[misc]


@app.command("list")
def list_models(
    task: Annotated[TaskChoice | None, typer.Option(help="Only entries of this task.")] = None,
    source: Annotated[SourceChoice | None, typer.Option(help="Only entries from this source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registry's curated (and your own) model aliases."""
    from zoo.registry import load_registry

    registry = load_registry(state.registries)
    specs = [registry.get(n) for n in registry.names()]
    specs = [s for s in specs if (task is None or s.task == task.value)
             and (source is None or s.source == source.value)]
    if as_json:
        typer.echo(json.dumps([_row(s) for s in specs], indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(specs)} models")
    for column in ("alias", "source", "task", "description"):
        table.add_column(column)
    for s in specs:
        table.add_row(*(escape(v) for v in (s.name, s.source_name, s.task, s.description)))
    out_console().print(table)


def _row(spec: ModelSpec) -> dict[str, object]:
    return {"alias": spec.name, "source": spec.source, "id": spec.source_id, "revision": spec.revision,
            "task": spec.task, "description": spec.description}


@app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="Alias, hf:ORG/NAME[@REV], timm:ARCH[.TAG] or a folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full spec as JSON.")] = False,
) -> None:
    """Show what NAME resolves to: source, task, inputs, preprocessing, tolerances."""
    from zoo.resolver import resolve

    spec = resolve(name, registries=state.registries)
    graphs = _graphs(spec)
    if as_json:
        typer.echo(json.dumps({**spec.to_dict(), **({"graphs": graphs} if graphs else {})}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, title=escape(spec.name))
    pp = {k: v for k, v in spec.to_dict()["preprocess"].items() if v not in (None, False)}
    rows = {
        "source": spec.source_name, "task": spec.task, "arch": spec.arch, "origin": spec.origin,
        "inputs": ", ".join(f"{i.name} {i.dtype}[{', '.join(map(str, i.shape))}]" for i in spec.inputs),
        "preprocess": ", ".join(f"{k}={v}" for k, v in pp.items()),
        "export": f"opset {spec.export.opset}",
        "verify": f"atol {spec.verify.atol:g}, rtol {spec.verify.rtol:g}, cosine >= {spec.verify.cosine:g}",
        "labels": _labels_summary(spec.labels),
        "local path": spec.local_path or "-", "description": spec.description,
    }
    if graphs:  # an encoder-decoder artifact: model.onnx (the decoder) and its companions
        rows["graphs"] = ", ".join(f"{name}: {g['file']} ({', '.join(i['name'] for i in g['inputs'])} -> "
                                   f"{len(g['outputs'])} outputs)" for name, g in graphs.items())
    for key, value in rows.items():
        table.add_row(key, escape(str(value)))
    out_console().print(table)


def _graphs(spec: ModelSpec) -> dict[str, Any]:
    """The graphs an artifact keeps beside model.onnx (``preprocess.graphs``: an encoder-decoder's encoder)."""
    if spec.origin != "artifact" or not spec.local_path:
        return {}
    from zoo.artifact import read_manifest

    return dict(read_manifest(Path(spec.local_path)).preprocess.get("graphs") or {})


def _labels_summary(labels: tuple[str, ...] | None) -> str:
    if not labels:
        return "-"
    # quoted: ImageNet's labels hold commas themselves ("tench, Tinca tinca")
    head = ", ".join(f"'{label}'" for label in labels[:4])
    return f"{len(labels)}: {head}" + (", ..." if len(labels) > 4 else "")
