"""torch -> ONNX: export, verify, and write a self-contained artifact (or nothing at all).

    zoo export ./my-bert --onnx --out artifacts/my-bert
    python -c "import zoo; print(zoo.export_onnx('minilm-l6').path)"

The dynamo exporter runs first (inputs by name, named dynamic dims); if it
fails, the TorchScript exporter gets a turn and the manifest says which one
produced the graph. The artifact is written to a hidden sibling folder and
renamed into place only after every verification check passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exporters.golden import golden_indices, write_golden
from exporters.source import Source, build_source
from exporters.verify import verify_model
from zoo.artifact import MODEL_FILE, check_destination, staged_dir, write_manifest
from zoo.checks import VerifyReport
from zoo.errors import ConfigError, ExportError, VerificationError, first_line
from zoo.manifest import Manifest, TensorInfo
from zoo.spec import ModelSpec
from zoo.versions import library_versions

Progress = Callable[[str], None]
PROTOBUF_LIMIT = 2 * 1024**3
MAX_BATCH = 4096


@dataclass
class ExportResult:
    """What ``export_onnx`` made: the artifact folder, its verification report and manifest."""

    path: Path
    report: VerifyReport
    manifest: Manifest

    @property
    def exporter(self) -> str:
        return self.manifest.exporter


def export_onnx(model: str | ModelSpec, *, out: str | Path | None = None, opset: int | None = None,
                atol: float | None = None, rtol: float | None = None, random_init: bool = False,
                keep_failed: str | Path | None = None, registries: list[str] | tuple[str, ...] = (),
                progress: Progress | None = None, model_kwargs: dict[str, Any] | None = None,
                module: Any | None = None) -> ExportResult:
    """Export ``model`` (any name ``resolve`` accepts, or a spec) to a verified ONNX artifact.

    ``model_kwargs`` go to the source's constructor (e.g. a shrunken test model);
    ``module`` replaces the torch module built from the spec (its forward takes the
    spec's inputs by name). Raises VerificationError (with ``.report``) when the
    graph does not behave like the torch model; nothing is then left at ``out``.
    """
    step = progress or (lambda _msg: None)
    step("resolve")
    spec = with_overrides(_as_spec(model, registries), opset=opset, atol=atol, rtol=rtol)
    dest = Path(out) if out is not None else Path("artifacts") / safe_name(spec.name)
    _check_destination(dest, keep_failed)
    step("build model")
    source = build_source(spec, random_init=random_init, model_kwargs=model_kwargs, module=module)
    with staged_dir(dest, keep_failed=Path(keep_failed) if keep_failed else None) as stage:
        manifest, report = _build_artifact(source, stage, random_init, step)
        if not report.passed:
            where = f"kept for debugging at {keep_failed}" if keep_failed else f"nothing written to {dest}"
            raise VerificationError(f"{spec.name}: the ONNX export does not match torch ({where}): "
                                    f"{report.summary()}. If the differences are numerical noise, widen "
                                    "--atol/--rtol; --keep-failed DIR keeps the graph for inspection", report)
    return ExportResult(dest.resolve(), report, manifest)


def _build_artifact(source: Source, stage: Path, random_init: bool,
                    step: Progress) -> tuple[Manifest, VerifyReport]:
    spec = source.spec
    model_path = stage / MODEL_FILE
    step("export (dynamo)")
    exporter, notes = export_graph(source.module, spec, source.example, model_path)
    step("preprocessor files")
    preprocess = source.task.write_preprocessor(spec, source.processor, stage)
    step(f"verify ({len(source.cases)} grid cases)")
    report, references = verify_model(source.module, spec, model_path, source.cases)
    report.checks += source.task.export_checks(stage, preprocess, source.cases, references)
    step("golden data")
    write_golden_sets(stage, source.cases, references)
    step("manifest")
    manifest = build_manifest(source, model_path, exporter, notes, preprocess, report, random_init)
    return write_manifest(stage, manifest), report


# ---------------------------------------------------------------- inputs and settings


def _as_spec(model: str | ModelSpec, registries: list[str] | tuple[str, ...]) -> ModelSpec:
    from zoo.resolve import resolve

    spec = model if isinstance(model, ModelSpec) else resolve(str(model), registries=registries)
    if spec.origin == "artifact":
        raise ConfigError(f"'{spec.local_path}' is already a zoo artifact; check it with 'zoo verify "
                          f"{spec.local_path}', or export its source ({spec.source_name})")
    return spec


def with_overrides(spec: ModelSpec, *, opset: int | None = None, atol: float | None = None,
                   rtol: float | None = None) -> ModelSpec:
    """The spec with per-call opset/tolerances; every bad value is reported at once."""
    import onnx

    problems = []
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 13 <= opset <= newest:
        problems.append(f"--opset {opset} is outside 13..{newest} (the exporters' range with this onnx)")
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            problems.append(f"{flag} {value} must be a finite number >= 0")
    if problems:
        raise ConfigError("; ".join(problems) + "; fix the flag (the registry default is used when it is omitted)")
    tol = dataclasses.replace(spec.verify, **{k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None})
    export = dataclasses.replace(spec.export, opset=opset) if opset is not None else spec.export
    return dataclasses.replace(spec, verify=tol, export=export)


def safe_name(name: str) -> str:
    """A folder name from a model name: 'hf:org/model@v1' -> 'hf-org-model-v1'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _check_destination(dest: Path, keep_failed: str | Path | None) -> None:
    check_destination(dest)  # before the model is built, not after (staged_dir checks again)
    if keep_failed is not None and Path(keep_failed).resolve() == dest.resolve():
        raise ConfigError(f"--keep-failed '{keep_failed}' is the destination itself; a failed artifact must "
                          "never appear at --out: choose another folder")


# ---------------------------------------------------------------- the exporters


def export_graph(module: Any, spec: ModelSpec, example: dict[str, np.ndarray], path: Path,
                 *, dynamic: bool = True) -> tuple[str, list[str]]:
    """Write ``path`` with the dynamo exporter, else TorchScript; return (exporter used, notes).

    ``dynamic=False`` exports fixed shapes: only for tests that plant that fault.
    """
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in example.items()}
    notes: list[str] = []
    try:
        _export_dynamo(module, spec, tensors, path, dynamic)
        return "dynamo", notes
    except Exception as exc:  # the dynamo exporter fails in many ways; the fallback gets its turn
        notes.append(f"dynamo exporter failed: {type(exc).__name__}: {first_line(exc)}")
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    try:
        _export_torchscript(module, spec, tensors, path, dynamic)
    except Exception as exc:  # both exporters failed: report both reasons
        raise ExportError(f"{spec.name}: both ONNX exporters failed. {notes[0]}; TorchScript exporter: "
                          f"{type(exc).__name__}: {first_line(exc)}. Re-run with --debug for the traceback, "
                          "or try another --opset") from exc
    return "torchscript", notes


def _dims(spec: ModelSpec) -> dict[str, Any]:
    """dynamic_shapes keyed by forward argument name; one shared Dim per axis name."""
    from torch.export import Dim

    from zoo.tasks import get_task

    made: dict[str, Any] = {}
    bounds = {"batch": MAX_BATCH, **get_task(spec.task).axis_bounds(spec)}
    shapes: dict[str, Any] = {}
    for item in spec.inputs:
        axes = {}
        for axis, name in item.dynamic_axes().items():
            key = re.sub(r"\W", "_", name)
            if key not in made:
                made[key] = Dim(key, min=1, max=max(bounds.get(name, MAX_BATCH), 2))
            axes[axis] = made[key]
        shapes[item.name] = axes
    return shapes


def _output_names(spec: ModelSpec) -> list[str]:
    from zoo.tasks import get_task

    return list(get_task(spec.task).output_names(spec))


def _export_dynamo(module: Any, spec: ModelSpec, tensors: dict[str, Any], path: Path, dynamic: bool) -> None:
    import torch

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT * 0.9
    # the exporter prints its progress on stdout; zoo's own progress display replaces it.
    # no_grad: an inference graph needs no autograd, and tracing without it is ~15% faster
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (), kwargs=tensors, dynamo=True,
                                    dynamic_shapes=_dims(spec) if dynamic else None,
                                    opset_version=spec.export.opset, input_names=list(tensors),
                                    output_names=_output_names(spec), verbose=False, optimize=False)
        _tidy_graph(program.model)
        program.save(str(path), external_data=big)


def _tidy_graph(model: Any) -> None:
    """Constant folding and clean-up of the exported graph, without the exporter's pattern rewrites.

    torch.onnx's own ``optimize`` spends most of its time (about 2 s of a MiniLM
    export) in onnxscript's generic rewrite rules; onnxruntime applies the same kind
    of rewrites when it loads the graph, and ``zoo optimize`` runs the fusions that
    matter. The folding and clean-up stay, so the graph keeps its size and load time.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    common.InlinePass()(model)
    fold_constants_ir(model)
    ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                         common.RemoveUnusedOpsetsPass(),
                         common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                         common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
                         common.OutputFixPass(), common.NameFixPass())(model)


def _export_torchscript(module: Any, spec: ModelSpec, tensors: dict[str, Any], path: Path, dynamic: bool) -> None:
    import torch

    from zoo.tasks import get_task

    axes: dict[str, dict[int, str]] = {i.name: i.dynamic_axes() for i in spec.inputs}
    for name, dims in get_task(spec.task).output_axes(spec).items():
        axes[name] = {i: d for i, d in enumerate(dims) if d is not None}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(tensors.values()), str(path), dynamo=False,
                          input_names=list(tensors), output_names=_output_names(spec),
                          dynamic_axes=axes if dynamic else None, opset_version=spec.export.opset)


# ---------------------------------------------------------------- artifact contents


def write_golden_sets(stage: Path, cases: list[Any], references: list[dict[str, np.ndarray]]) -> None:
    for index, picked in enumerate(golden_indices(cases)):
        write_golden(stage, index, cases[picked].inputs, references[picked])


def build_manifest(source: Source, model_path: Path, exporter: str, notes: list[str],
                   preprocess: dict[str, Any], report: VerifyReport, random_init: bool) -> Manifest:
    spec = source.spec
    inputs, outputs = graph_signature(model_path)
    return Manifest(
        name=spec.name, spec=spec.to_dict(),
        source={"source": spec.source, "id": spec.source_id, "revision": spec.revision},
        task=spec.task, labels=tuple(spec.labels) if spec.labels else None,
        inputs=inputs, outputs=outputs, opset=spec.export.opset,
        exporter=exporter, export_notes=tuple(notes), random_init=random_init,
        preprocess=preprocess, tolerances=dataclasses.asdict(spec.verify),
        versions=library_versions(), verified=report.passed, verification=report.to_dict(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_kwargs=source.model_kwargs or None, run=run_summary(spec),
    )


def graph_signature(model_path: Path) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Inputs and outputs as the graph declares them, in graph order (the runtime feeds in this order)."""
    import onnx

    from exporters.verify import graph_dims

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def describe(value: Any) -> TensorInfo:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return TensorInfo(value.name, np.dtype(dtype).name, tuple(graph_dims(value)))

    return tuple(describe(v) for v in graph.input), tuple(describe(v) for v in graph.output)


def run_summary(spec: ModelSpec) -> dict[str, Any] | None:
    """run.json of the zoo run dir a fine-tuned model came from (base, data, config, metrics)."""
    if spec.origin != "run" or not spec.local_path:
        return None
    run_file = Path(spec.local_path).parent / "run.json"
    if not run_file.is_file():
        return {"run_dir": str(run_file.parent), "note": "run.json not found"}
    run = json.loads(run_file.read_text())
    # the spec is recorded in full under "spec" already
    return {"run_dir": str(run_file.parent), **{k: v for k, v in run.items() if k != "spec"}}


__all__ = ["ExportResult", "Source", "build_source", "export_graph", "export_onnx"]
