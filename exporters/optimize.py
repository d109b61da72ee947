"""``zoo optimize``: a faster artifact from an exported one, refused unless it passes the gates.

    zoo optimize artifacts/minilm --out artifacts/minilm-int8 --level int8
    python -c "import zoo; print(zoo.optimize('artifacts/digits', level='auto').path)"

Levels: ``fused`` (onnxscript's onnxruntime fusions, exact), ``int8`` (dynamic,
for transformers), ``int8-static`` (QDQ calibrated on real images, for CNNs),
``fp16`` (CUDA only), ``openvino`` (the parent's graph on OpenVINO in float32),
``bf16`` (the same on OpenVINO computing in bf16: CPUs with AVX512_BF16 or AMX
only), ``int8-weights`` and ``int4`` (weight-only MatMulNBits for text generation,
judged by ``generative_gate``) and ``auto`` (each level that applies on this machine,
the fastest that passes). The OpenVINO levels are engine settings, not rewritten graphs: model.onnx
is the parent's, the manifest's ``engine`` names the engine and precision, and the
golden data are written under them. A lossy level searches for the least fp32 it needs: int8 keeps the
MatMuls that lose the most (measured on the gate's data) in fp32, a few more at
each step, until the accuracy gate passes. The result is written beside, never
over, the parent: a new artifact with its own golden data and hashes whose
manifest records its parent, the recipe and the gate figures under
``optimization``. A refusal raises GateError with the table of what failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exporters import fusion, gates, generative_gate, quantize
from exporters.evaldata import MIN_GATE_ROWS, EvalSet, GateData, gate_data
from exporters.verify import dynamic_axes_check, graph_check, read_tolerances, run_session, tolerance_record
from zoo.artifact import (
    MANIFEST,
    MODEL_FILE,
    check_artifact,
    check_destination,
    read_bytes,
    read_manifest,
    staged_dir,
    write_manifest,
)
from zoo.checks import Check, VerifyReport
from zoo.errors import ConfigError, GateError, ZooError
from zoo.manifest import Manifest
from zoo.runtime import engines
from zoo.runtime.engines import Engine
from zoo.spec import Tolerances
from zoo.tasks import get_task
from zoo.tasks.base import Task

LEVELS = ("fused", "int8", "int8-static", "fp16", "openvino", "bf16", "int8-weights", "int4", "auto")
LOSSY = ("int8", "int8-static", "fp16", "bf16", "int8-weights", "int4")
# The levels that run the parent's graph unchanged on another engine setting
ENGINE_LEVELS = {"openvino": Engine("openvino", "f32"), "bf16": Engine("openvino", "bf16")}
# weight-only levels for causal language models, judged by the generative gate; auto tries them in this order
GENERATIVE = ("int4", "int8-weights")
# ... keeping these shares of the body's MatMuls, the most error-prone first, at 8 bits (int4) or fp32 (int8-weights)
WEIGHT_LADDER = (0.0, 1 / 16, 1 / 8, 1 / 4)
# The int8 recipe each kind of input suits: dynamic for transformers over tokens, calibrated QDQ for
# images (only image data gives calibration rows; see evaldata). auto tries it before "fused".
INT8_FOR = {"text": "int8", "image": "int8-static"}
# int8 keeps these shares of its MatMuls in fp32, the most error-prone first, until the gate passes
LADDER = (0.0, 1 / 6, 1 / 4, 1 / 3, 1 / 2)
Progress = Callable[[str], None]


@dataclass
class Candidate:
    """One optimised graph on its way through the gates."""

    level: str
    path: Path
    recipe: dict[str, Any]
    engine: Engine = field(default_factory=Engine)
    checks: list[Check] = field(default_factory=list)
    speed: list[gates.SpeedFigure] = field(default_factory=list)
    max_abs: float = 0.0
    grid_max_abs: float = 0.0  # against the parent on the verification grid, measured by _grid_checks
    figures: dict[str, Any] = field(default_factory=dict)  # the generative gate's measurements

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def mean_speedup(self) -> float:
        values = [f.speedup for f in self.speed if f.speedup > 0]
        return math.exp(sum(map(math.log, values)) / len(values)) if values else 0.0

    def summary(self) -> dict[str, Any]:
        failed = [f"{c.name}: {c.value} (limit {c.limit})" for c in self.checks if not c.passed]
        # the task gate's first figure against the parent (e.g. minimum cosine), as the table of what was tried shows it
        accuracy = next((f"{c.name.removeprefix('parent: ')} {c.value}" for c in self.checks
                         if c.name.startswith("parent: ")), None)
        return {"level": self.level, "engine": self.engine.to_dict(), "passed": self.passed, "accuracy": accuracy,
                **({"skipped": self.recipe["skipped"]} if "skipped" in self.recipe else {}),
                "speedup": round(self.mean_speedup, 3), "failed": failed,
                "speed": [dataclasses.asdict(f) for f in self.speed]}


@dataclass
class OptimizeResult:
    """What ``optimize`` made: the new artifact, its gate report, and every level it tried."""

    path: Path
    level: str
    report: VerifyReport
    manifest: Manifest
    tried: list[dict[str, Any]]
    speed: list[gates.SpeedFigure]
    notes: list[str]


@dataclass
class Context:
    """The parent artifact and everything measured on it once, shared by every level tried."""

    folder: Path
    manifest: Manifest
    data: GateData
    work: Path
    providers: list[str]
    max_drop: float
    step: Progress
    parent_outputs: gates.Outputs | None = None
    grid: Any = None  # GridReference, built lazily
    fused: Path | None = None
    fusions: dict[str, int] = field(default_factory=dict)
    generative: generative_gate.GenerativeData | None = None  # text generation: the generative gate's data
    reference: generative_gate.Reference | None = None  # ... and the parent's figures on it
    max_ppl_increase: float | None = None

    @property
    def task(self) -> Task:
        return get_task(self.manifest.task)

    @property
    def parent_model(self) -> Path:
        return self.folder / MODEL_FILE


def optimize(artifact: str | Path, *, out: str | Path | None = None, level: str = "auto",
             eval_data: str | None = None, max_drop: float = 0.5, keep_failed: str | Path | None = None,
             progress: Progress | None = None, max_ppl_increase: float | None = None) -> OptimizeResult:
    """Write a faster artifact from ``artifact`` at ``level``, or raise GateError and write nothing.

    ``eval_data``: a .txt file (one sentence per line) or anything ``zoo finetune
    --data`` reads (labelled rows also measure the accuracy drop); ``max_drop``:
    the largest accuracy loss allowed, in percentage points. ``keep_failed``: on a
    refusal, the refused graphs (LEVEL.onnx) and the gate report go there for inspection.
    ``max_ppl_increase``: text generation, the largest perplexity rise allowed, in percent
    (default per level: ``generative_gate.DEFAULT_MAX_PPL_INCREASE``).
    """
    step = progress or (lambda _msg: None)
    started = time.perf_counter()
    folder = Path(artifact)
    manifest = _checked_parent(folder)
    dest = Path(out) if out is not None else folder.parent / f"{folder.name}-{level}"
    providers = _check_options(level, max_drop, manifest, dest, max_ppl_increase)
    _require_graph_tools()
    if keep_failed is not None:
        _check_keep_failed(Path(keep_failed), dest)
    step("gate data")
    generative = get_task(manifest.task).generates
    data = GateData(EvalSet([], "")) if generative else gate_data(folder, manifest, eval_data)
    with tempfile.TemporaryDirectory(prefix="zoo-optimize-") as work:
        ctx = Context(folder, manifest, data, Path(work), providers, max_drop, step, max_ppl_increase=max_ppl_increase)
        if generative:
            ctx.generative = generative_gate.gate_data(folder, manifest, eval_data)
            data.notes += ctx.generative.notes
        candidates = _attempt_all(ctx, _levels(level, ctx.task, fused_at_export(manifest)))
        passing = [c for c in candidates if c.passed]
        if not passing:
            refusal = _refusal(folder, dest, level, candidates)
            if keep_failed is not None:
                _keep(candidates, refusal, Path(keep_failed))
            raise refusal
        chosen = max(passing, key=lambda c: c.mean_speedup)
        step("write artifact")
        with staged_dir(dest) as stage:
            manifest_out, report = _write_artifact(ctx, chosen, candidates, stage, time.perf_counter() - started)
    tried = [c.summary() for c in candidates]
    return OptimizeResult(dest.resolve(), chosen.level, report, manifest_out, tried, chosen.speed, data.notes)


# ---------------------------------------------------------------- options


def _checked_parent(folder: Path) -> Manifest:
    """The parent's manifest, once every file matched it (paths confined, sizes, sha256, nothing unlisted)."""
    manifest = read_manifest(folder)
    check_artifact(folder, manifest, strict=True)
    if manifest.preprocess.get("graphs"):  # an encoder-decoder: optimising model.onnx alone would orphan the rest
        files = ", ".join(g["file"] for g in manifest.preprocess["graphs"].values())
        raise ConfigError(f"{folder} holds several graphs ({files} beside model.onnx: a {manifest.task} artifact); "
                          "zoo optimize handles one-graph artifacts only: run the exported artifact as it is")
    if manifest.optimization:
        parent = manifest.optimization.get("parent", {}).get("path", "its parent")
        raise ConfigError(f"{folder} is already optimised (level {manifest.optimization.get('level')}); "
                          f"optimise the fp32 artifact it came from ({parent}) instead")
    return manifest


def fused_at_export(manifest: Manifest) -> bool:
    """``zoo export`` fused the graph already (manifest ``graph``): level fused would add nothing."""
    return (manifest.graph or {}).get("form") == "fused"


def _check_keep_failed(keep: Path, dest: Path) -> None:
    """--keep-failed: a new or empty folder, or an earlier refusal's (replaced); never a user's files or --out."""
    if keep.resolve() == dest.resolve():
        raise ConfigError(f"--keep-failed '{keep}' is the destination itself; a refused graph must never "
                          "appear at --out: choose another folder")
    if keep.exists() and not _earlier_refusal(keep):
        raise ConfigError(f"--keep-failed '{keep}' exists and is not an earlier refusal's folder (only those are "
                          "replaced); choose a new folder or remove it")


def _earlier_refusal(keep: Path) -> bool:
    """An empty folder, or one holding only what ``_keep`` writes (LEVEL.onnx files and refusal.json)."""
    if not keep.is_dir():
        return False
    names = {p.name for p in keep.iterdir()}
    written = {f"{level}.onnx" for level in LEVELS} | {"refusal.json"}
    return names <= written and (not names or "refusal.json" in names)


def _check_options(level: str, max_drop: float, manifest: Manifest, dest: Path,
                   max_ppl_increase: float | None = None) -> list[str]:
    """All option problems at once; returns the execution providers the gates run on."""
    problems = []
    if level not in LEVELS:
        problems.append(f"--level {level!r} is not one of {', '.join(LEVELS)}")
    if not (max_drop >= 0 and np.isfinite(max_drop)):
        problems.append(f"--max-drop {max_drop} must be a finite number of percentage points >= 0")
    if max_ppl_increase is not None and not (max_ppl_increase >= 0 and np.isfinite(max_ppl_increase)):
        problems.append(f"--max-ppl-increase {max_ppl_increase} must be a finite percentage >= 0")
    generates = get_task(manifest.task).generates
    if generates and level not in (*GENERATIVE, "auto"):
        problems.append(f"--level {level} does not apply to {manifest.task} artifacts (a decoder with a KV cache, "
                        f"judged by the generative gate): use --level {', '.join(GENERATIVE)} or auto")
    if level in GENERATIVE and not generates:
        problems.append(f"--level {level} quantises the weights of text-generation models; this artifact is "
                        f"{manifest.task}: use --level int8, int8-static or fused")
    if level == "fused" and fused_at_export(manifest):
        problems.append(f"--level fused: this artifact's graph was fused and verified at export "
                        f"({_fusion_summary(manifest)}), so it is already the fused level; use --level int8 "
                        "or auto for a faster one")
    if level == "int8-static" and INT8_FOR.get(get_task(manifest.task).modality) != level:
        problems.append(f"--level int8-static calibrates image models; this artifact is {manifest.task}: "
                        "use --level int8 (dynamic) or fused")
    if problems:
        raise ConfigError("; ".join(problems))
    if level in ENGINE_LEVELS:
        _check_engine_level(level, manifest)
    check_destination(dest)
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if level == "fp16" and not cuda:
        raise ConfigError("--level fp16 runs on the CUDA execution provider, and this onnxruntime has none "
                          f"({', '.join(ort.get_available_providers())}); on a CPU use --level int8, "
                          "int8-static or fused")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if level == "fp16" else ["CPUExecutionProvider"]


def _fusion_summary(manifest: Manifest) -> str:
    fusions = (manifest.graph or {}).get("fusions") or {}
    return ", ".join(f"{count} {kind}" for kind, count in fusions.items()) or "fusions recorded"


def _check_engine_level(level: str, manifest: Manifest) -> None:
    """The OpenVINO levels need OpenVINO, a task it runs, and for bf16 a CPU that computes in bf16."""
    if get_task(manifest.task).generates:
        raise ConfigError(f"--level {level} runs on OpenVINO, and text-generation artifacts run on onnxruntime only "
                          "(OpenVINO is not supported for generation yet): use --level fused or int8")
    engines.require("openvino")
    if level == "bf16":
        has, evidence = engines.bf16_compute()
        if not has:
            raise ConfigError(f"--level bf16 needs a CPU that computes in bf16, and this one {evidence} "
                              "(/proc/cpuinfo); bf16 would be emulated, slower than float32: use --level openvino, "
                              "int8 or auto")


def _require_graph_tools() -> None:
    """Every level starts from onnxscript's fusions; the runtime-only install has neither it nor onnx_ir."""
    try:
        import onnx_ir  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"zoo optimize needs the training and export extra ({exc.name} is not installed; the core "
                          "install holds the runtime only): pip install 'zoo-toolkit[train]'") from None


def _levels(level: str, task: Task, fused_at_export: bool = False) -> list[str]:
    """The level asked for, or for auto every level that applies here, most aggressive first.

    An artifact fused at export is the fused level already: auto tries only the lossy one.
    """
    if level != "auto":
        return [level]
    if task.generates:
        return list(GENERATIVE)
    # the levels that need no search first: they are the rivals an int8 search must be able to beat
    levels = []
    if engines.installed("openvino"):
        levels += ["bf16", "openvino"] if engines.bf16_compute()[0] else ["openvino"]
    return levels + ([] if fused_at_export else ["fused"]) + [INT8_FOR.get(task.modality, "int8")]


# ---------------------------------------------------------------- one level


def _attempt_all(ctx: Context, levels: list[str]) -> list[Candidate]:
    """Each level built and judged (accuracy, then verification); then every one that passed is timed in the
    same turns as the parent and eager torch, each of those timed once."""
    if ctx.task.generates:
        return [_weight_only(ctx, level) for level in levels]
    candidates: list[Candidate] = []
    for level in levels:
        if level == "openvino" and any(c.level == "bf16" and c.passed for c in candidates):
            candidates.append(_not_tried(level, "bf16 passed on the same engine (f32 is its fallback)"))
            continue
        candidates.append(_attempt(ctx, level, [c for c in candidates if c.passed]))
    passing = [c for c in candidates if c.passed]
    if any(not c.speed for c in passing):
        _race(ctx, passing)
    for candidate in passing:
        candidate.checks += gates.speed_checks(candidate.speed)
    return candidates


def _not_tried(level: str, why: str) -> Candidate:
    engine = ENGINE_LEVELS.get(level, Engine())
    return Candidate(level, Path(), {"quantization": None, "skipped": why}, engine,
                     [Check("not tried", False, "skipped", "tried where it could be kept", why)])


def _attempt(ctx: Context, level: str, rivals: list[Candidate]) -> Candidate:
    """``level`` built and judged on accuracy and verification; timed later, with the others (``_race``).

    ``rivals``: the levels that passed so far, which an int8 search must be able to beat before it runs.
    """
    ctx.step(f"{level}: build")
    if level == "fused":
        candidate = Candidate(level, _fused(ctx), {"passes": fusion.describe_passes(), "fusions": ctx.fusions,
                                                   "quantization": None})
        candidate.checks = _accuracy_checks(ctx, candidate)
    elif level == "int8":
        candidate = _search(ctx, level, lambda: _int8_ladder(ctx), _build_int8, rivals)
    elif level == "int8-static":
        candidate = _search(ctx, level, lambda: _static_ladder(ctx), _build_static, rivals)
    elif level in ENGINE_LEVELS:
        engine = ENGINE_LEVELS[level]
        candidate = Candidate(level, ctx.parent_model, {"engine": engine.to_dict(), "graph": "the parent's, unchanged",
                                                        "quantization": None}, engine)
        candidate.checks = _accuracy_checks(ctx, candidate)
    else:
        candidate = _build_fp16(ctx)
        candidate.checks = _accuracy_checks(ctx, candidate)
    if candidate.passed:
        ctx.step(f"{level}: verify")
        candidate.checks += _graph_checks(ctx, candidate) + _grid_checks(ctx, candidate)
    return candidate


def _weight_only(ctx: Context, level: str) -> Candidate:
    """A text-generation graph with MatMulNBits weights, judged by the generative gate (perplexity, greedy
    agreement, decode speed) instead of the per-output gates of the other tasks."""
    assert ctx.generative is not None  # optimize() reads the generative data for every text-generation artifact
    if ctx.reference is None:
        ctx.step("generative gate: the parent's perplexity and greedy continuations")
        ctx.reference = generative_gate.reference(ctx.parent_model, ctx.folder, ctx.manifest, ctx.generative)
    limit = ctx.max_ppl_increase if ctx.max_ppl_increase is not None else \
        generative_gate.DEFAULT_MAX_PPL_INCREASE[level]
    feeds = [generative_gate.prefill_feed(gates.session(ctx.parent_model), ctx.generative.windows[0])]
    ranked = [name for name, _ in quantize.rank_weight_error(ctx.parent_model, feeds, level)]
    steps: list[dict[str, Any]] = []
    for index, keep in enumerate(sorted({math.ceil(share * len(ranked)) for share in WEIGHT_LADDER})):
        ctx.step(f"{level}: step {index + 1}/{len(WEIGHT_LADDER)} ({keep} MatMuls kept at higher precision)")
        path = ctx.work / f"{level}-{index}.onnx"
        settings = quantize.weight_only(ctx.parent_model, path, level, keep=ranked[:keep])
        candidate = Candidate(level, path, {"passes": [], "quantization": settings})
        judged = generative_gate.judge(path, ctx.folder, ctx.manifest, ctx.generative, ctx.reference, limit)
        candidate.checks, candidate.figures, candidate.max_abs = judged.checks, judged.figures, judged.max_abs
        steps.append({"kept_fp32": keep, "kept_as": _kept_as(level, settings.get("kept", {})),
                      "passed": candidate.passed, "figures": {c.name: c.value for c in candidate.checks}})
        if candidate.passed:
            break
    candidate.recipe["quantization"]["search"] = steps
    if candidate.passed:
        ctx.step(f"{level}: verify and time decoding")
        candidate.checks += _graph_checks(ctx, candidate)
        candidate.speed = generative_gate.measure_decode(ctx.parent_model, path, ctx.folder, ctx.manifest)
        candidate.checks += gates.speed_checks(candidate.speed)
    return candidate


def _kept_as(level: str, kept: dict[str, Any]) -> str:
    """What the search's kept MatMuls keep: int4's 8-bit weights, or fp32 activations for a weight that is
    already exact (on its GGUF grid); int8-weights' fp32."""
    if level != "int4":
        return "fp32"
    if not kept.get("fp32_activations"):
        return "int8"
    return "int8 or fp32 activations" if kept.get("nodes") else "fp32 activations"


def _fused(ctx: Context) -> Path:
    """The parent with onnxscript's fusions, saved offline at the portable level (made once).

    A parent fused at export is that graph already (the same recipe, verified against torch).
    """
    if ctx.fused is None and fused_at_export(ctx.manifest):
        ctx.fused = ctx.parent_model
        ctx.fusions = dict((ctx.manifest.graph or {}).get("fusions") or {})
    if ctx.fused is None:
        raw = ctx.work / "fused-raw.onnx"
        ctx.fusions = fusion.fuse_graph(ctx.parent_model, raw)
        ctx.fused = ctx.work / "fused.onnx"
        fusion.save_offline(raw, ctx.fused)
    return ctx.fused


def _search(ctx: Context, level: str, ladder: Callable[[], list[list[str]]],
            build: Callable[[Context, Path, list[str]], dict[str, Any]], rivals: list[Candidate]) -> Candidate:
    """Keep more nodes in fp32 at each step until the accuracy gate passes; record every step.

    The first step keeps nothing in fp32, so no later step can be faster: where it fails the accuracy gate and
    cannot win on speed (``_bound_beaten``), the rest of the ladder (and the ranking it needs) is skipped.
    """
    steps: list[dict[str, Any]] = []
    candidate = None
    keeps: list[list[str]] = [[]]  # every ladder starts with nothing kept; the rest is ranked only when needed
    index = 0
    while index < len(keeps):
        keep = keeps[index]
        ctx.step(f"{level}: step {index + 1}" + (f"/{len(keeps)}" if index else "") +
                 f" ({len(keep)} nodes kept in fp32)")
        path = ctx.work / f"{level}-{index}.onnx"
        settings = build(ctx, path, keep)
        candidate = Candidate(level, path, {"passes": fusion.describe_passes(), "fusions": ctx.fusions,
                                            "quantization": settings})
        candidate.checks = _accuracy_checks(ctx, candidate)
        steps.append({"kept_fp32": len(keep), "passed": candidate.passed,
                      "figures": {c.name: c.value for c in candidate.checks}})
        if candidate.passed:
            break
        if index == 0:
            beaten = _bound_beaten(ctx, candidate, rivals)
            if candidate.speed:  # what the bound race measured, kept in the record of the search
                steps[0]["speed"] = [dataclasses.asdict(f) for f in candidate.speed]
            if beaten is not None:
                candidate.checks.insert(0, beaten)  # the reason the search stopped, first in the table
                break
            keeps = ladder()
            assert not keeps[0]  # the step just taken
        index += 1
    assert candidate is not None  # every ladder has at least its first step
    candidate.recipe["quantization"]["search"] = steps
    return candidate


def _int8_ladder(ctx: Context) -> list[list[str]]:
    fused = _fused(ctx)
    nodes = quantize.weight_matmuls(fused)
    ranked = [name for name, _ in quantize.rank_by_error(fused, nodes, ctx.data.evaluation)]
    counts = sorted({math.ceil(share * len(ranked)) for share in LADDER})
    return [ranked[:k] for k in counts]


def _build_int8(ctx: Context, path: Path, keep: list[str]) -> dict[str, Any]:
    return quantize.int8_dynamic(_fused(ctx), path, keep_fp32=keep)


def _static_ladder(ctx: Context) -> list[list[str]]:
    """All of Conv/MatMul/Gemm; then the stem that reads raw pixels in fp32; then the head too; then every Conv."""
    base = _fused(ctx)
    nodes = quantize.static_candidates(base)
    stem = quantize.input_nodes(base, nodes)
    head = nodes[-1:]
    convs = [n for n in nodes if n not in set(stem + head) and _op_of(base, n) == "Conv"]
    ladder = [[], stem, stem + head, stem + head + convs]
    unique: list[list[str]] = []
    for keep in ladder:
        if keep not in unique and len(keep) < len(nodes):
            unique.append(keep)
    return unique


def _op_of(path: Path, name: str) -> str:
    import onnx

    return next(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node if n.name == name)


def _build_static(ctx: Context, path: Path, keep: list[str]) -> dict[str, Any]:
    if ctx.data.calibration is None:
        raise ConfigError("int8-static needs calibration images and none were found")
    return quantize.int8_static(_fused(ctx), path, ctx.data.calibration, keep_fp32=keep)


def _build_fp16(ctx: Context) -> Candidate:
    path = ctx.work / "fp16.onnx"
    settings = quantize.fp16(_fused(ctx), path)
    return Candidate("fp16", path, {"passes": fusion.describe_passes(), "fusions": ctx.fusions,
                                    "quantization": settings})


# ---------------------------------------------------------------- the gates


def _accuracy_checks(ctx: Context, candidate: Candidate) -> list[Check]:
    """Task-level agreement with the parent on the gate's data (the cheap gate, run at every step)."""
    evaluation = ctx.data.evaluation
    if ctx.parent_outputs is None:
        ctx.parent_outputs = gates.run_all(gates.session(ctx.parent_model, ctx.providers), evaluation.batches)
    got = gates.run_all(gates.session(candidate.path, ctx.providers, engine=candidate.engine), evaluation.batches)
    candidate.max_abs = gates.max_abs_difference(ctx.parent_outputs, got)
    checks = gates.task_checks(ctx.task, ctx.parent_outputs, got, "parent", evaluation.source)
    if gates.gate_of(ctx.task).labelled:
        checks.append(gates.accuracy_check(ctx.parent_outputs, got, evaluation.labels, ctx.max_drop))
    if candidate.level not in LOSSY:
        checks.append(gates.elementwise_check(ctx.parent_outputs, got, *parent_tolerances(ctx.manifest), "parent"))
    return checks


def _graph_checks(ctx: Context, candidate: Candidate) -> list[Check]:
    from exporters.onnx import graph_signature

    inputs, outputs = graph_signature(candidate.path)
    same = inputs == ctx.manifest.inputs and outputs == ctx.manifest.outputs
    signature = Check("graph inputs and outputs", same, f"{len(inputs)} in, {len(outputs)} out",
                      "same names, dtypes and axes as the parent",
                      "" if same else f"got {[i.to_dict() for i in inputs]} -> {[o.to_dict() for o in outputs]}")
    axes = dynamic_axes_check(candidate.path, [(i.name, list(i.shape)) for i in ctx.manifest.model_spec().inputs],
                              [(o.name, list(o.shape)) for o in ctx.manifest.outputs])
    return [graph_check(candidate.path), signature, axes]


def _grid_checks(ctx: Context, candidate: Candidate) -> list[Check]:
    """The verification grid: against the parent graph, and against torch fp32 when the source resolves."""
    grid = ctx.grid = ctx.grid or GridReference.build(ctx)
    got = gates.run_all(gates.session(candidate.path, ctx.providers, engine=candidate.engine), grid.inputs)
    candidate.grid_max_abs = gates.max_abs_difference(grid.parent, got)
    checks = []
    for against, reference in (("grid vs parent", grid.parent), ("grid vs torch fp32", grid.torch)):
        if reference is None:
            continue
        if candidate.level in LOSSY:
            # a differing top-1 counts only where the reference's own top-2 margin exceeds the measured difference
            noise = Tolerances(atol=gates.max_abs_difference(reference, got), rtol=0.0)
            checks += gates.task_checks(ctx.task, reference, got, against, "the verification grid", noise)
        else:
            checks += gates.task_checks(ctx.task, reference, got, against, "the verification grid")
            checks.append(gates.elementwise_check(reference, got, *parent_tolerances(ctx.manifest), against))
    return checks


@dataclass
class GridReference:
    """The verification grid's inputs with the parent's outputs, and torch's when the source resolves."""

    inputs: list[dict[str, np.ndarray]]
    parent: gates.Outputs
    torch: gates.Outputs | None
    note: str
    module: Any = None  # the torch source, kept to time eager torch beside the graphs

    @classmethod
    def build(cls, ctx: Context) -> GridReference:
        ctx.step("verification grid (torch fp32 when the source resolves)")
        inputs, torch_outputs, note, module = _torch_grid(ctx)
        if inputs is None:
            from exporters.golden import golden_sets, read_golden

            inputs = [read_golden(s)[0] for s in golden_sets(ctx.folder)]
        parent = gates.run_all(gates.session(ctx.parent_model, ctx.providers), inputs)
        return cls(inputs, parent, torch_outputs, note, module)


def _torch_grid(ctx: Context) -> tuple[list[dict[str, np.ndarray]] | None, gates.Outputs | None, str, Any]:
    """(grid inputs, torch outputs, note, module); (None, None, why, None) when the torch source is not available."""
    if ctx.manifest.random_init:
        return None, None, "torch fp32 not compared: the parent was exported from random weights", None
    try:
        from exporters.source import build_source, torch_outputs

        # source_spec: an artifact never chooses to run a repository's own code (trust_remote_code) here
        source = build_source(ctx.manifest.source_spec(), random_init=False, model_kwargs=ctx.manifest.model_kwargs)
    except (ZooError, ImportError, OSError) as exc:
        return None, None, f"torch fp32 not compared: the source does not resolve here ({str(exc)[:200]})", None
    inputs = [case.inputs for case in source.cases]
    names = source.output_names  # the gates judge the first output, as onnxruntime lists it
    values = [torch_outputs(source.module, feed, names)[names[0]] for feed in inputs]
    return (inputs, gates.Outputs(values, [feed.get("attention_mask") for feed in inputs]), "torch fp32 compared",
            source.module)


def _bound_beaten(ctx: Context, bound: Candidate, rivals: list[Candidate]) -> Check | None:
    """Why a search's first step (nothing kept in fp32, the fastest it can make) makes the rest pointless:
    it fails the speed gate itself, or a rival that passed every gate is at least as fast; None otherwise.

    Timed with the rivals in one race (their figures are kept for the final choice); without rivals (a
    level asked for on its own) nothing is timed and the search runs.
    """
    if not rivals:
        return None
    _race(ctx, [*rivals, bound])
    fails = [c for c in gates.speed_checks(bound.speed) if not c.passed]
    winners = [r for r in rivals if all(c.passed for c in gates.speed_checks(r.speed))
               and r.mean_speedup >= bound.mean_speedup]
    if not fails and not winners:
        return None
    limit = f"{fails[0].name} {fails[0].limit}" if fails else \
        f"faster than {winners[0].level} ({winners[0].mean_speedup:.2f}x), which passed every gate"
    return Check("speed with nothing kept in fp32 (its fastest)", False, f"{bound.mean_speedup:.2f}x the parent",
                 limit, "keeping nodes in fp32 only slows it, so the search for the nodes to keep was not run")


def _race(ctx: Context, contenders: list[Candidate]) -> None:
    """Every contender timed at the task's usual shapes in the same turns as the parent and eager torch."""
    ctx.step(f"time {', '.join(c.level for c in contenders)} against the parent"
             + (" and torch fp32" if ctx.grid and ctx.grid.module is not None else ""))
    shapes = gates.speed_shapes(ctx.folder, ctx.manifest, ctx.data.evaluation)
    entries = [(c.path, c.engine) for c in contenders]
    module = ctx.grid.module if ctx.grid else None
    if module is None:  # random weights or no source here: the parent is the only reference
        figures = gates.measure_speed(ctx.parent_model, entries, shapes, ctx.providers)
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(gates.SPEED_THREADS)  # the graphs' thread count: a fair turn for each
        try:
            figures = gates.measure_speed(ctx.parent_model, entries, shapes, ctx.providers, _torch_call(module))
        finally:
            torch.set_num_threads(threads)
    for candidate, figure in zip(contenders, figures):
        candidate.speed = figure


def _torch_call(module: Any) -> Callable[[dict[str, np.ndarray]], Callable[[], Any]]:
    """feed -> one eager torch fp32 call on it, as 'zoo bench --vs-torch' runs it (inference mode)."""
    import torch

    def factory(feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def call() -> Any:
            with torch.inference_mode():
                return module(**tensors)

        return call

    return factory


def parent_tolerances(manifest: Manifest) -> tuple[Tolerances, str]:
    """The parent's export tolerances and the rule verification applied them with."""
    return read_tolerances(manifest.tolerances)


def _refusal(folder: Path, dest: Path, level: str, candidates: list[Candidate]) -> GateError:
    report = VerifyReport(subject=f"zoo optimize {folder} --level {level}: refused")
    for candidate in candidates:
        prefix = f"{candidate.level}: " if len(candidates) > 1 else ""
        report.checks += _search_checks(candidate, prefix)
        report.checks += [dataclasses.replace(c, name=prefix + c.name) for c in candidate.checks]
    tried = ", ".join(c.level for c in candidates)
    return GateError(f"{folder}: no optimised graph passed the gates (tried {tried}); nothing written to {dest}. "
                     f"{report.summary()}", report)


def _search_checks(candidate: Candidate, prefix: str) -> list[Check]:
    """One line per earlier step of a lossy level's search, so a refusal shows everything that was tried."""
    steps = (candidate.recipe.get("quantization") or {}).get("search", [])[:-1]
    return [Check(f"{prefix}step {i + 1}: {step['kept_fp32']} nodes kept in {step.get('kept_as', 'fp32')}", False,
                  "; ".join(f"{k.replace('parent: ', '')} {v}" for k, v in step["figures"].items()),
                  "every gate", f"a later step keeps more in {step.get('kept_as', 'fp32')}")
            for i, step in enumerate(steps)]


def _keep(candidates: list[Candidate], refusal: GateError, folder: Path) -> None:
    """The refused graphs, never an artifact: no manifest, so nothing can load them by mistake."""
    import json

    if folder.exists():
        shutil.rmtree(folder)  # an earlier refusal's folder: _check_keep_failed made sure
    folder.mkdir(parents=True)
    for candidate in candidates:
        if candidate.path.is_file():  # a level skipped before it was built has no graph
            shutil.copyfile(candidate.path, folder / f"{candidate.level}.onnx")
    report = refusal.report.to_dict() if isinstance(refusal.report, VerifyReport) else {}
    (folder / "refusal.json").write_text(json.dumps({"message": str(refusal), **report}, indent=2) + "\n")


# ---------------------------------------------------------------- the new artifact


def _write_artifact(ctx: Context, chosen: Candidate, candidates: list[Candidate], stage: Path,
                    seconds: float) -> tuple[Manifest, VerifyReport]:
    from exporters.golden import golden_sets, read_golden, write_golden
    from zoo.versions import library_versions

    if chosen.path == ctx.parent_model:  # an engine setting: the parent's graph, with any external data
        for rel in (r for r in ctx.manifest.files if r.startswith(MODEL_FILE)):
            shutil.copyfile(ctx.folder / rel, stage / rel)
    else:
        shutil.copyfile(chosen.path, stage / MODEL_FILE)
    _copy_preprocessor_files(ctx, stage)
    session = gates.session(stage / MODEL_FILE, ctx.providers, engine=chosen.engine)  # golden data on its engine
    for index, data_set in enumerate(golden_sets(ctx.folder)):
        inputs, _ = read_golden(data_set)
        write_golden(stage, index, inputs, run_session(session, inputs))  # every output, in graph order
    tolerances = tolerance_record(*_tolerances(ctx, chosen))
    report = VerifyReport(subject=f"{ctx.manifest.name} ({chosen.level})", checks=list(chosen.checks),
                          tolerances=tolerances, seconds=seconds)
    manifest = ctx.manifest.replace(verified=True, verification=report.to_dict(),
                                    tolerances=tolerances, versions=library_versions(),
                                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    optimization=_record(ctx, chosen, candidates),
                                    engine=None if chosen.engine == Engine() else chosen.engine.to_dict())
    return write_manifest(stage, manifest), report


def _copy_preprocessor_files(ctx: Context, stage: Path) -> None:
    """Every file of the parent except its graph, manifest and golden data (the new graph has its own)."""
    for rel in ctx.manifest.files:
        top = rel.split("/", 1)[0]
        if rel.startswith(MODEL_FILE) or top.startswith("test_data_set_"):
            continue
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # confined to the parent, size-capped, and the bytes written are the bytes whose hash matched
        target.write_bytes(read_bytes(ctx.folder, rel, manifest=ctx.manifest))


def _tolerances(ctx: Context, chosen: Candidate) -> tuple[Tolerances, str]:
    """Golden-data tolerances: the parent's for an exact recipe; for a lossy one, room for the measured error.

    int8 kernels differ between CPUs (AVX2, VNNI, ARM dot products), so the golden
    replay on another machine needs a margin of the size int8 itself introduced.
    """
    tol, rule = parent_tolerances(ctx.manifest)
    if chosen.level not in LOSSY:
        return tol, rule
    measured = max(chosen.max_abs, chosen.grid_max_abs)
    atol = float(f"{max(tol.atol, 4 * measured):.1g}")
    cosine = gates.gate_of(ctx.task).limits.get("min_cosine", tol.cosine)  # what an embedding gate held it to
    return Tolerances(atol=atol, rtol=tol.rtol, cosine=min(tol.cosine, cosine)), rule


def _record(ctx: Context, chosen: Candidate, candidates: list[Candidate]) -> dict[str, Any]:
    """The manifest's ``optimization`` entry: parent, level, recipe, gates, and what else was tried."""
    parent_model = ctx.manifest.files.get(MODEL_FILE)
    record: dict[str, Any] = {
        "parent": {"name": ctx.manifest.name, "path": str(ctx.folder.resolve()),
                   "model_sha256": parent_model.sha256 if parent_model else None,
                   "manifest_sha256": hashlib.sha256(read_bytes(ctx.folder, MANIFEST)).hexdigest()},
        "level": chosen.level,
        "recipe": {**chosen.recipe, "ort_offline_level": fusion.OFFLINE_LEVEL,
                   "ops": fusion.op_counts(chosen.path)},
        "gates": {"passed": chosen.passed, "checks": [dataclasses.asdict(c) for c in chosen.checks],
                  **({"generative": chosen.figures} if chosen.figures else {}),
                  "speed": [{**dataclasses.asdict(f), "speedup": round(f.speedup, 3)} for f in chosen.speed],
                  "data": ctx.data.evaluation.source, "rows": ctx.data.evaluation.rows,
                  "notes": ctx.data.notes + ([ctx.grid.note] if ctx.grid else []),
                  "limits": {**gates.gate_of(ctx.task).limits, "max_drop_points": ctx.max_drop,
                             "min_rows": MIN_GATE_ROWS, "min_speedup": gates.MIN_SPEEDUP}},
        "providers": ctx.providers,
        "engine": chosen.engine.to_dict(),
        "cpu": {"model": engines.cpu_model(), "flags": engines.relevant_flags()},
    }
    if chosen.level in GENERATIVE:
        # the generative gate judged it (figures above), not the per-output gate of the other tasks
        record["gates"].update(data=chosen.figures["data"], rows=chosen.figures["scored_tokens"], limits={
            "max_ppl_increase_percent": chosen.figures["max_ppl_increase_percent"],
            "agree_tokens": generative_gate.AGREE_TOKENS, "min_agreement": generative_gate.MIN_AGREEMENT,
            "min_scored_tokens": generative_gate.MIN_SCORED_TOKENS, "min_speedup": gates.MIN_SPEEDUP})
    if len(candidates) > 1:
        record["tried"] = [c.summary() for c in candidates]
    return record


__all__ = ["LEVELS", "OptimizeResult", "fused_at_export", "optimize"]
