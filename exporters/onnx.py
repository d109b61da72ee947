"""torch -> ONNX: export, verify, and write a self-contained artifact (or nothing at all).

    zoo export ./my-bert --onnx --out artifacts/my-bert
    python -c "import zoo; print(zoo.export_onnx('minilm-l6').path)"

The dynamo exporter runs first (inputs by name, named dynamic dims). Its graph
is then fused for onnxruntime (``exporters.fusion``: attention, LayerNorm, Gelu;
the task's ``graph_fusion`` names the recipe, ``fuse=False`` skips it) and the
fused graph is verified like any other; when it fails, the plain graph gets the
same turn, so an unverified fusion never ships. When the exporter
fails, or its graph fails verification (onnxruntime cannot load it, or its
outputs differ), a lower onnxruntime graph-optimisation level is tried where that
could help, then the TorchScript exporter gets the same turns. The manifest says
which graph was kept and records in ``export_notes`` everything tried before it.
torch's reference outputs are computed once, case by case, before any graph is
loaded into onnxruntime, so the two never hold a large model's activations at
once. The artifact is written to a hidden sibling folder and renamed into place
only after every verification check passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exporters import fusion
from exporters.golden import golden_indices, write_golden
from exporters.memory import budget, collection_paused, frozen_heap, plan_grid, size_text
from exporters.source import DEFAULT_INIT_SEED, Source, build_source
from exporters.verify import (NoiseFloor, compare_grid, dynamic_axes_check, golden_folder, graph_check,
                              named_check, ort_session, torch_references, verify_model, within_tolerance)
from zoo.artifact import MODEL_FILE, check_destination, staged_dir, write_manifest
from zoo.checks import Check, VerifyReport
from zoo.errors import ConfigError, ExportError, VerificationError, first_line
from zoo.manifest import Manifest, TensorInfo
from zoo.spec import ModelSpec, opset_problem
from zoo.tasks.base import Companion
from zoo.versions import library_versions

Progress = Callable[[str], None]
PROTOBUF_LIMIT = 2 * 1024**3
MAX_BATCH = 4096
EXPORTERS = ("dynamo", "torchscript")  # in the order they are tried
# checks that a graph could pass at a lower onnxruntime optimisation level (a fusion that breaks or drifts)
_RUNTIME_CHECKS = ("onnxruntime loads the graph", "shape grid", "top-1 agreement", "cosine similarity",
                   "float32 noise floor")


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
                seed: int = DEFAULT_INIT_SEED, keep_failed: str | Path | None = None,
                registries: list[str] | tuple[str, ...] = (), progress: Progress | None = None,
                model_kwargs: dict[str, Any] | None = None, module: Any | None = None,
                fuse: bool = True) -> ExportResult:
    """Export ``model`` (any name ``resolve`` accepts, or a spec) to a verified ONNX artifact.

    ``random_init`` builds random weights from ``seed`` (recorded in the manifest), so a
    smoke test is repeatable. ``model_kwargs`` go to the source's constructor (e.g. a
    shrunken test model); ``module`` replaces the torch module built from the spec (its
    forward takes the spec's inputs by name). ``progress`` is called with the name of
    each stage as it starts. ``fuse=False`` keeps the plain graph (no onnxruntime fusions).
    Raises VerificationError (with ``.report``) when no graph behaves like the torch model;
    nothing is then left at ``out``.
    """
    step = progress or (lambda _msg: None)
    # name, flags and destination are checked before the first stage is announced: bad input is one line
    spec = with_overrides(_as_spec(model, registries), opset=opset, atol=atol, rtol=rtol)
    dest = Path(out) if out is not None else Path("artifacts") / safe_name(spec.name)
    _check_destination(dest, keep_failed)
    limit = budget()  # ZOO_MEMORY_BUDGET
    step("build model" + (f" (random weights, seed {seed})" if random_init else ""))
    with contextlib.ExitStack() as frozen:
        with collection_paused():  # building is mostly importing torch and transformers: long-lived objects
            source = build_source(spec, random_init=random_init, seed=seed, model_kwargs=model_kwargs, module=module)
            # what the build left is collected once and its survivors frozen, before automatic collection resumes
            frozen.enter_context(frozen_heap())
        step(f"memory plan ({len(source.cases)} grid cases, budget {size_text(limit)})")
        # before anything is written: a grid that cannot fit the budget is refused here
        cases = plan_grid(source.task, source.spec, source.module, source.processor, source.cases, limit, step)
        source = dataclasses.replace(source, cases=cases)
        with staged_dir(dest, keep_failed=Path(keep_failed) if keep_failed else None) as stage:
            # an explicit --rtol is the user's limit, applied as given; the registry's default yields to the floor
            manifest, report = _build_artifact(source, stage, random_init, step, noise_floor=rtol is None, fuse=fuse)
            if not report.passed:
                where = f"kept for debugging at {keep_failed}" if keep_failed else f"nothing written to {dest}"
                tried = f" Tried: {'; '.join(manifest.export_notes)}." if manifest.export_notes else ""
                raise VerificationError(f"{spec.name}: the ONNX export does not match torch ({where}): "
                                        f"{report.summary()}.{tried} If the differences are numerical noise, widen "
                                        "--atol/--rtol; --keep-failed DIR keeps the graph for inspection", report)
    return ExportResult(dest.resolve(), report, manifest)


def _build_artifact(source: Source, stage: Path, random_init: bool, step: Progress, *,
                    noise_floor: bool = True, fuse: bool = True) -> tuple[Manifest, VerifyReport]:
    spec = source.spec
    model_path = stage / MODEL_FILE
    step("preprocessor files")
    preprocess = source.task.write_preprocessor(spec, source.processor, stage, source.folder)
    preprocess.update(source.task.model_record(source.module))
    step(f"torch reference outputs ({len(source.cases)} grid cases, one at a time)")
    references = torch_references(source.module, spec, source.cases)
    kept = choose_graph(source, model_path, references, step, noise_floor=noise_floor, fuse=fuse)
    if fuse and kept.report.passed and source.task.generates:  # a decoder with a KV cache: its own fusions
        from exporters.fusion_decoder import fuse_verified

        kept = fuse_verified(source, model_path, kept, references, preprocess, step, noise_floor=noise_floor)
    report = kept.report
    report.checks += source.task.export_checks(stage, preprocess, source.cases, references)
    if report.passed:  # an encoder-decoder's encoder beside the decoder: exported once model.onnx is good
        graphs, checks = export_companions(source, stage, preprocess, tuple(sorted({c.seed for c in source.cases})),
                                           step)
        report.checks += checks
        if graphs:
            preprocess["graphs"] = graphs
    step("golden data")
    write_golden_sets(stage, source.cases, references)
    step("manifest")
    export = dataclasses.replace(spec.export, ort_optimization=kept.optimization)
    source = dataclasses.replace(source, spec=dataclasses.replace(spec, export=export))
    manifest = build_manifest(source, model_path, kept.exporter, kept.notes, preprocess, report, random_init,
                              graph=kept.graph)
    return write_manifest(stage, manifest), report


# ---------------------------------------------------------------- companion graphs


def export_companions(source: Source, stage: Path, preprocess: dict[str, Any], seeds: tuple[int, ...],
                      step: Progress) -> tuple[dict[str, Any], list[Check]]:
    """Export and check every companion graph of ``source``'s task (an encoder-decoder's encoder) into ``stage``.

    After model.onnx passed: each is exported from the same torch module (TorchScript when dynamo fails),
    checked (onnx.checker, dynamic axes, torch vs onnxruntime on its own grid, the task's export checks)
    and given golden data in a folder named after it (``encoder/test_data_set_N``); then the task's
    ``pipeline_checks`` run all the graphs together. Returns the manifest's ``preprocess.graphs`` record
    and the checks, each named after its graph.
    """
    task, spec = source.task, source.spec
    companions = task.companion_graphs(source.module, spec, source.processor, seeds)
    records: dict[str, Any] = {}
    checks: list[Check] = []
    for graph in companions:
        path = stage / graph.file
        step(f"export the {graph.name} graph ({graph.file})")
        exporter, notes = export_graph(graph.module, graph.spec, graph.example, path)
        step(f"verify the {graph.name} graph ({len(graph.cases)} cases)")
        references = torch_references(graph.module, graph.spec, graph.cases)
        own = [graph_check(path), dynamic_axes_check(path, [(i.name, list(i.shape)) for i in graph.spec.inputs],
                                                     list(task.output_axes(graph.spec).items()))]
        grid, _ = compare_grid(graph.module, graph.spec, path, graph.cases, spec.verify, references=references)
        own += grid + task.export_checks(stage, preprocess, graph.cases, references)
        checks += [named_check(c, graph.name) for c in own]
        for index, picked in enumerate(golden_indices(graph.cases)):
            write_golden(stage / golden_folder(graph.file), index, graph.cases[picked].inputs, references[picked])
        inputs, outputs = graph_signature(path)
        records[graph.name] = {"file": graph.file, "exporter": exporter, "export_notes": notes,
                               "golden": golden_folder(graph.file),
                               "inputs": [i.to_dict() for i in inputs], "outputs": [o.to_dict() for o in outputs]}
    if companions and all(c.passed for c in checks):
        step(f"check model.onnx with {', '.join(c.file for c in companions)} against torch")
        checks += _pipeline_checks(source, stage, companions)
    return records, checks


def _pipeline_checks(source: Source, stage: Path, companions: list[Companion]) -> list[Check]:
    level = source.spec.export.ort_optimization
    sessions = {"model": ort_session(stage / MODEL_FILE, level, lean=True)}
    sessions.update({c.name: ort_session(stage / c.file, level, lean=True) for c in companions})
    try:
        return source.task.pipeline_checks(source.module, source.spec, sessions, companions, source.spec.verify,
                                           within_tolerance)
    finally:
        del sessions
        gc.collect()


# ---------------------------------------------------------------- choosing the graph


@dataclass
class GraphChoice:
    """The graph left at model.onnx: who wrote it, the onnxruntime level it was verified at, and why.

    ``graph`` is the manifest's record of its form: {"form": "fused", "recipe", "fusions": {kind: count}}
    or {"form": "plain", "reason"}.
    """

    exporter: str
    optimization: str
    report: VerifyReport
    notes: list[str]
    graph: dict[str, Any]


def choose_graph(source: Source, model_path: Path, references: list[dict[str, np.ndarray]],
                 step: Progress, *, noise_floor: bool = True, fuse: bool = True) -> GraphChoice:
    """Export and verify with each exporter (and a lower onnxruntime level where it may help) until one passes.

    ``noise_floor`` lets a case that misses rtol pass within its measured float32 noise floor
    (``exporters.verify.NoiseFloor``); off, rtol is applied as given. ``fuse``: each exporter's
    graph is fused first (when the task has a recipe and a fusion matches); a fused graph that
    fails verification gives way to the plain graph of the same exporter.

    Returns the first graph that passes; when none does, the last one tried (for --keep-failed),
    its report, and notes naming every attempt and why it was not kept.
    """
    spec = source.spec
    notes: list[str] = []
    last: GraphChoice | None = None
    noise = NoiseFloor(source.module, spec, source.cases, references, step) if noise_floor else None
    try:
        for exporter in EXPORTERS:
            step(f"export ({exporter})")
            try:
                # a graph about to be fused is handed over in memory: the plain one is written only if it ships
                plain = export_with(exporter, source.module, spec, source.example, model_path,
                                    in_memory=fuse and source.task.graph_fusion(spec) is not None)
            except Exception as exc:  # the exporters fail in many ways; the next one gets its turn
                notes.append(f"{exporter} exporter failed: {type(exc).__name__}: {first_line(exc)}")
                continue
            graph = fuse_in_place(source, model_path, exporter, step, notes, plain) if fuse else _plain("--no-fuse")
            last = _verify_levels(source, model_path, references, noise, exporter, graph, notes, step)
            if not last.report.passed and graph["form"] == "fused":
                # the fusion, not the exporter, may be at fault: the plain graph gets its turn
                reason = f"the fused graph failed verification ({_failed_checks(last.report)[:200]})"
                notes.append(f"{reason}; verifying the plain {exporter} graph")
                _restore_plain(model_path, plain)
                last = _verify_levels(source, model_path, references, noise, exporter, _plain(reason), notes, step)
            del plain  # the plain graph in memory shares the module's weights until the next exporter's turn
            if last.report.passed:
                return last
            # the next exporter writes model.onnx afresh: this refused graph waits aside, so that the
            # report (and --keep-failed) still has a graph when the next exporter cannot export at all
            _move_graph(model_path, _aside(model_path, exporter))
        if last is None:
            raise ExportError(f"{spec.name}: both ONNX exporters failed. {'; '.join(notes)}. Re-run with --debug "
                              "for the traceback, or try another --opset")
        _move_graph(_aside(model_path, last.exporter) / model_path.name, model_path.parent)
        return last
    finally:
        for folder in (*EXPORTERS, "plain"):
            shutil.rmtree(_aside(model_path, folder), ignore_errors=True)
        _fused_path(model_path).unlink(missing_ok=True)


def _verify_levels(source: Source, model_path: Path, references: list[dict[str, np.ndarray]],
                   noise: NoiseFloor | None, exporter: str, graph: dict[str, Any], notes: list[str],
                   step: Progress) -> GraphChoice:
    """Verify model.onnx at the recorded onnxruntime level, then a lower one where that may help."""
    spec = source.spec
    what = f"fused {exporter}" if graph["form"] == "fused" else exporter
    choice: GraphChoice | None = None
    for level in _levels(spec):
        step(f"verify the {what} graph (onnxruntime optimisation '{level}', {len(source.cases)} cases)")
        report, _ = verify_model(source.module, spec, model_path, source.cases, references=references,
                                 optimization=level, noise=noise)
        choice = GraphChoice(exporter, level, report, notes, graph)
        if report.passed:
            if notes:
                notes.append(f"kept the {what} graph, verified at onnxruntime optimisation '{level}'")
            return choice
        notes.append(f"{what} graph at onnxruntime optimisation '{level}' failed: {_failed_checks(report)}")
        if not _lower_level_may_help(report):
            break
    assert choice is not None  # _levels names at least one level
    return choice


# ---------------------------------------------------------------- default fusion


def fuse_in_place(source: Source, model_path: Path, exporter: str, step: Progress, notes: list[str],
                  plain: Any = None) -> dict[str, Any]:
    """Put the fused graph at model.onnx; return the manifest's graph record.

    ``plain``: the exported graph as an onnx_ir model not yet written (``export_with(in_memory=True)``),
    or None when it is at model.onnx. The fusion works on a copy, so the plain graph stays whole for
    ``_restore_plain`` (in memory, or aside on disk). The plain graph is what model.onnx holds when the
    task has no recipe, the graph is too large for one protobuf file, no fusion matched, or the fusion
    itself raised (noted); one held in memory is written then.
    """
    record = _fuse(source, model_path, exporter, step, notes, plain)
    if record["form"] == "plain" and plain is not None:
        save_graph(plain, model_path)
    return record


def _fuse(source: Source, model_path: Path, exporter: str, step: Progress, notes: list[str],
          plain: Any) -> dict[str, Any]:
    recipe = source.task.graph_fusion(source.spec)
    if recipe is None:
        return _plain(f"the {source.task.name} task has no export fusion recipe")
    if plain is None and any(part != model_path for part in model_path.parent.glob(model_path.name + "*")):
        return _plain("the graph keeps its weights in external data (over 2 GiB); fusion writes one file")
    step(f"fuse the {exporter} graph for onnxruntime ({recipe})")
    fused = _fused_path(model_path)
    try:
        # clone: a new graph over the same weight tensors, so a fusion that fails halfway leaves ``plain`` as it was
        counts = fusion.RECIPES[recipe](model_path if plain is None else plain.clone(), fused)
    except Exception as exc:  # onnxscript's rewriter fails in many ways; the plain graph is still there
        fused.unlink(missing_ok=True)
        reason = f"the {recipe} fusion failed: {type(exc).__name__}: {first_line(exc)[:200]}"
        notes.append(f"{reason}; verifying the plain {exporter} graph")
        return _plain(reason)
    if not counts:
        return _plain(f"no {recipe} fusion pattern matched this graph")
    if plain is None:
        _move_graph(model_path, _aside(model_path, "plain"))
    fused.replace(model_path)
    return {"form": "fused", "recipe": recipe, "fusions": counts}


def _plain(reason: str) -> dict[str, Any]:
    return {"form": "plain", "reason": reason}


def _fused_path(model_path: Path) -> Path:
    """Where the fusion writes, beside model.onnx but outside the names export_with clears."""
    return model_path.with_name(f".fused-{model_path.name}")


def _restore_plain(model_path: Path, plain: Any = None) -> None:
    """The plain graph back at model.onnx: written from memory, or moved back from aside."""
    model_path.unlink()
    if plain is not None:
        save_graph(plain, model_path)
    else:
        _move_graph(_aside(model_path, "plain") / model_path.name, model_path.parent)


def _aside(model_path: Path, exporter: str) -> Path:
    return model_path.parent / f".refused-{exporter}"


def _move_graph(graph: Path, folder: Path) -> None:
    """Move ``graph`` and its external data files (named after it) into ``folder``, names unchanged."""
    folder.mkdir(exist_ok=True)
    for part in graph.parent.glob(graph.name + "*"):
        part.replace(folder / part.name)


def _levels(spec: ModelSpec) -> tuple[str, ...]:
    """The recorded onnxruntime level, then 'basic' (no fusions) when the recorded one fuses."""
    level = spec.export.ort_optimization
    return (level, "basic") if level in ("all", "extended") else (level,)


def _lower_level_may_help(report: VerifyReport) -> bool:
    return all(c.name in _RUNTIME_CHECKS or c.name.startswith("output ") for c in report.failures)


def _failed_checks(report: VerifyReport) -> str:
    return "; ".join(f"{c.name} {c.value}" + (f" ({c.detail[:120]})" if c.detail else "") for c in report.failures)


# ---------------------------------------------------------------- inputs and settings


def _as_spec(model: str | ModelSpec, registries: list[str] | tuple[str, ...]) -> ModelSpec:
    from zoo.resolver import resolve

    spec = model if isinstance(model, ModelSpec) else resolve(str(model), registries=registries)
    if spec.origin == "artifact":
        raise ConfigError(f"'{spec.local_path}' is already a zoo artifact; check it with 'zoo verify "
                          f"{spec.local_path}', or export {_artifact_source(spec)}")
    return spec


def _artifact_source(spec: ModelSpec) -> str:
    """What an artifact was exported from: the fine-tuning run its manifest names, else its source model."""
    from zoo.artifact import read_manifest

    run_dir = (read_manifest(Path(str(spec.local_path))).run or {}).get("run_dir")
    if not run_dir:
        return f"its source ({spec.source_name})"
    if (Path(run_dir) / "run.json").is_file():
        return f"the fine-tuning run it was made from: 'zoo export {run_dir} --onnx'"
    return f"the fine-tuning run it was made from ({run_dir}, no longer there; its base was {spec.source_name})"


def with_overrides(spec: ModelSpec, *, opset: int | None = None, atol: float | None = None,
                   rtol: float | None = None) -> ModelSpec:
    """The spec with per-call opset/tolerances; every bad value is reported at once."""
    problems = []
    if opset is not None and (problem := opset_problem(opset)):
        problems.append(f"--opset {opset} {problem}")
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

    Only a failure to export moves on to the next exporter here; ``choose_graph`` also
    moves on when a graph fails verification. ``dynamic=False`` exports fixed shapes:
    only for tests that plant that fault.
    """
    notes: list[str] = []
    for exporter in EXPORTERS:
        try:
            export_with(exporter, module, spec, example, path, dynamic=dynamic)
            return exporter, notes
        except Exception as exc:  # the exporters fail in many ways; the next one gets its turn
            notes.append(f"{exporter} exporter failed: {type(exc).__name__}: {first_line(exc)}")
    raise ExportError(f"{spec.name}: both ONNX exporters failed. {'; '.join(notes)}. Re-run with --debug for the "
                      "traceback, or try another --opset")


def export_with(exporter: str, module: Any, spec: ModelSpec, example: dict[str, np.ndarray], path: Path,
                *, dynamic: bool = True, in_memory: bool = False) -> Any:
    """Write ``path`` (replacing any earlier graph there) with one exporter: 'dynamo' or 'torchscript'.

    ``in_memory``: the dynamo graph, when it fits one protobuf file, is returned as an onnx_ir model
    instead of written (``save_graph`` writes it); otherwise, and always for TorchScript, None.
    """
    import torch

    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    tensors = {k: torch.from_numpy(v) for k, v in example.items()}
    # tracing makes graphs, not garbage, until it ends; the collection as the block ends frees the exporter's
    # copy of the program and its weights before onnxruntime loads the file
    try:
        with collection_paused():
            if exporter == "dynamo":
                return _export_dynamo(module, spec, tensors, path, dynamic, in_memory)
            _export_torchscript(module, spec, tensors, path, dynamic)
            return None
    except BaseException:
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        raise


def _dims(spec: ModelSpec) -> dict[str, Any]:
    """dynamic_shapes keyed by forward argument name; one shared Dim per axis name."""
    from torch.export import Dim

    from zoo.tasks import get_task

    made: dict[str, Any] = {}
    task = get_task(spec.task)
    bounds = {"batch": MAX_BATCH, **task.axis_bounds(spec)}
    shapes: dict[str, Any] = {}
    for item in spec.inputs:
        axes = {}
        for axis, name in item.dynamic_axes().items():
            key = _identifier(name)
            if name in task.derived_axes:  # a sum of other axes (past + new tokens): torch infers it
                axes[axis] = Dim.AUTO
                continue
            if key not in made:
                made[key] = Dim(key, min=1, max=max(bounds.get(name, MAX_BATCH), 2))
            axes[axis] = made[key]
        shapes[_identifier(item.name)] = axes
    return shapes


def _identifier(name: str) -> str:
    """A graph name as a forward argument name ('past_key_values.0.key' -> 'past_key_values_0_key')."""
    return re.sub(r"\W", "_", name)


def _output_names(spec: ModelSpec) -> list[str]:
    from zoo.tasks import get_task

    return list(get_task(spec.task).output_names(spec))


def _export_dynamo(module: Any, spec: ModelSpec, tensors: dict[str, Any], path: Path, dynamic: bool,
                   in_memory: bool = False) -> Any:
    """Write the dynamo graph to ``path``, or return it as an onnx_ir model (``in_memory``, one-file size only)."""
    import torch

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT * 0.9
    # the exporter prints its progress on stdout; zoo's own progress display replaces it.
    # no_grad: an inference graph needs no autograd, and tracing without it is ~15% faster
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (), kwargs={_identifier(k): v for k, v in tensors.items()}, dynamo=True,
                                    dynamic_shapes=_dims(spec) if dynamic else None,
                                    opset_version=spec.export.opset, input_names=list(tensors),
                                    output_names=_output_names(spec), verbose=False, optimize=False)
        fusion.tidy_graph(program.model)
        _name_derived_axes(program.model, spec)
        if in_memory and not big:
            return program.model
        program.save(str(path), external_data=big)
        return None


def save_graph(model: Any, path: Path) -> None:
    """Write an onnx_ir model that fits one protobuf file (what ``export_with(in_memory=True)`` returns)."""
    import onnx_ir as ir

    ir.save(model, str(path))


def _name_derived_axes(model: Any, spec: ModelSpec) -> None:
    """Give the inputs' inferred axes (``Dim.AUTO``: torch names them s0, s53 ...) the names the spec declares."""
    import onnx_ir as ir

    from zoo.tasks import get_task

    derived = get_task(spec.task).derived_axes
    declared = {item.name: item.shape for item in spec.inputs}
    for value in model.graph.inputs:
        shape = declared.get(value.name, ())
        if value.shape is not None and len(shape) == len(value.shape) and any(d in derived for d in shape):
            value.shape = ir.Shape([ir.SymbolicDim(d) if d in derived else old for d, old in zip(shape, value.shape)])


def _export_torchscript(module: Any, spec: ModelSpec, tensors: dict[str, Any], path: Path, dynamic: bool) -> None:
    import torch

    from zoo.tasks import get_task

    axes: dict[str, dict[int, str]] = {i.name: i.dynamic_axes() for i in spec.inputs}
    for name, dims in get_task(spec.task).output_axes(spec).items():
        axes[name] = {i: d for i, d in enumerate(dims) if d is not None}
    # no_grad: without it autograd keeps every activation of the traced forward for a backward
    # that never comes (SAM at 1024 px, batch 2: over 14 GiB; 5.2 GiB without)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(tensors.values()), str(path), dynamo=False,
                          input_names=list(tensors), output_names=_output_names(spec),
                          dynamic_axes=axes if dynamic else None, opset_version=spec.export.opset)


# ---------------------------------------------------------------- artifact contents


def write_golden_sets(stage: Path, cases: list[Any], references: list[dict[str, np.ndarray]]) -> None:
    for index, picked in enumerate(golden_indices(cases)):
        write_golden(stage, index, cases[picked].inputs, references[picked])


def build_manifest(source: Source, model_path: Path, exporter: str, notes: list[str],
                   preprocess: dict[str, Any], report: VerifyReport, random_init: bool,
                   graph: dict[str, Any] | None = None) -> Manifest:
    spec = source.spec
    inputs, outputs = graph_signature(model_path)
    return Manifest(
        name=spec.name, spec=spec.to_dict(),
        source={"source": spec.source, "id": spec.source_id, "revision": spec.revision},
        task=spec.task, labels=tuple(spec.labels) if spec.labels else None,
        inputs=inputs, outputs=outputs, opset=spec.export.opset,
        exporter=exporter, export_notes=tuple(notes), random_init=random_init, seed=source.seed,
        preprocess=preprocess, tolerances=report.tolerances,
        versions=library_versions(), verified=report.passed, verification=report.to_dict(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_kwargs=source.model_kwargs or None, run=run_summary(spec), graph=graph,
    )


def graph_signature(model_path: Path) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Inputs and outputs as the graph declares them, in graph order (the runtime feeds in this order)."""
    import onnx

    from exporters.verify import graph_dims, graph_interface

    inputs, outputs = graph_interface(model_path)

    def describe(value: Any) -> TensorInfo:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return TensorInfo(value.name, np.dtype(dtype).name, tuple(graph_dims(value)))

    return tuple(describe(v) for v in inputs), tuple(describe(v) for v in outputs)


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


__all__ = ["ExportResult", "GraphChoice", "Source", "build_source", "choose_graph", "export_graph", "export_onnx",
           "export_with"]
