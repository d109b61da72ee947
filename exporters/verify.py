"""Prove an ONNX graph behaves like its torch model, and re-check artifacts on their own.

    zoo verify artifacts/minilm-l6                  # hashes, checker, golden data replay
    zoo verify artifacts/minilm-l6 --against-source # plus the full torch comparison

Outputs are judged against the scale of their row (the ``row-scale`` rule)::

    |onnx_i - torch_i| <= atol + rtol * max_j |torch_j|      j over the row of i (the last axis)

float32 rounding in a deep network is proportional to the magnitude of the values
it adds up, not to the one element it ends in: a random-initialised dla102 or
inception_v3 emits rows of logits from 1e2 to 1e12, where a logit near zero
carries rounding noise of the row's scale (elementwise relative error 0.0065
while 2e-9 of the row). The rule accepts exactly that, and nothing that would
change a row by more than ``rtol`` of its largest value: a fault of 1% of a
small logit that sits beside logits 1e8 times larger is *below* float32
resolution at that scale and is not caught by the output check (the task's
agreement check still compares top-1 classes). Outputs of 0 or 1 dimensions
are judged element by element. Torch's value is the reference, never onnx's.
Artifacts written before the rule was recorded say nothing, and are judged
with plain ``allclose`` (|d| <= atol + rtol * |torch_i|).

Where an output misses ``rtol`` on a case, the export measures the case's float32
noise floor before refusing: how far torch float32 itself is from a float64 run of
the same model (``NoiseFloor``). Badly conditioned weights amplify rounding: random
gemma4_vit_167m at 768 px is 1.5e-3 of a row away from float64 in torch itself, and
a correct graph, whose sums run in another order, is as far. The case passes when
the graph is within ``NOISE_FACTOR`` times that floor of torch (at most
``NOISE_RTOL_CAP``); the widened rtol and why are recorded in the manifest, so the
golden data replays under the limit the export was verified with.

Every grid case carries the memory plan's estimate (``exporters.memory``): the torch and
onnxruntime runs of a case record the peak resident memory they measured beside it, in the
report's ``memory``, and a case's float64 run is left out when its estimate is over the budget.
"""

from __future__ import annotations

import copy
import functools
import gc
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from exporters.memory import float64_estimate, measure, memory_record, plan_grid, size_text
from zoo.artifact import MODEL_FILE, artifact_path, check_artifact, read_manifest
from zoo.checks import Check, VerifyReport
from zoo.errors import ArtifactError, ConfigError, VerificationError, ZooError, first_line
from zoo.manifest import TOLERANCE_RULES, Manifest
from zoo.runtime import engines
from zoo.runtime.engines import ORT_LEVELS, Engine
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks import get_task
from zoo.tasks.base import Case, Task

__all__ = ["Check", "NoiseFloor", "VerifyReport", "compare_grid", "tolerance_record", "torch_references",
           "verify_artifact", "verify_model", "within_tolerance"]

RULES = TOLERANCE_RULES
ROW_SCALE, ALLCLOSE = TOLERANCE_RULES
# A graph's float32 sums run in another order than torch's: by the triangle inequality, a graph at most
# twice as far from the float64 result as torch float32 is, is within 3x torch's own error of torch.
NOISE_FACTOR = 3.0
# Beyond 1% of a row, float32 torch is itself too far from the exact result to verify against
NOISE_RTOL_CAP = 1e-2


# ---------------------------------------------------------------- comparisons


def tolerance_record(tol: Tolerances, rule: str = ROW_SCALE, widened: str = "") -> dict[str, Any]:
    """The manifest's ``tolerances``: the limits, the rule that applies them, and why rtol was widened (if it was)."""
    scale = "max |torch| over the last axis (elementwise for 0-1 dims)" if rule == ROW_SCALE else "|torch| per element"
    return {**asdict(tol), "rule": rule, "scale": scale, **({"widened": widened} if widened else {})}


def read_tolerances(record: dict[str, Any], where: str = "manifest.json") -> tuple[Tolerances, str]:
    """(limits, rule) from a manifest's or report's ``tolerances`` record."""
    rule = record.get("rule", ALLCLOSE)  # artifacts from before the rule was recorded
    if rule not in RULES:
        raise ArtifactError(f"{where}: tolerances.rule '{rule}' is not one this zoo knows ({', '.join(RULES)}); "
                            "upgrade zoo-toolkit or re-export the artifact")
    limits = {k: record[k] for k in ("atol", "rtol", "cosine") if k in record}
    try:
        return Tolerances(**limits), rule
    except TypeError as exc:  # pragma: no cover - keys are filtered above
        raise ArtifactError(f"{where}: tolerances {limits} are not numbers ({exc}); re-export the artifact") from exc


def reference_scale(reference: np.ndarray, rule: str = ROW_SCALE) -> np.ndarray:
    """What rtol multiplies, per element: the row's largest finite |torch| (row-scale) or |torch_i| (allclose)."""
    magnitude = np.where(np.isfinite(reference), np.abs(reference.astype(np.float64)), 0.0)
    return _scale(magnitude, rule)


def _scale(magnitude: np.ndarray, rule: str) -> np.ndarray:
    if rule == ALLCLOSE or magnitude.ndim <= 1 or magnitude.shape[-1] == 0:
        return magnitude
    return np.broadcast_to(magnitude.max(axis=-1, keepdims=True), magnitude.shape)


@dataclass(frozen=True)
class Difference:
    """One output's distance from torch, computed once for every check that reads it.

    An output can be hundreds of MB in float64 (a masked LM's logits over a 30k vocabulary), and
    each fresh array of that size costs page faults: the conversions, the difference and the
    scale are made once, in place where possible, and shared by the tolerance test, the rtol a
    failure would need and the report's maxima.
    """

    diff: np.ndarray  # |got - torch| in float64; NaN where either side is NaN, or inf - inf
    magnitude: np.ndarray  # |torch|, 0 where torch is not finite
    scale: np.ndarray  # what rtol multiplies under the rule
    exact: np.ndarray | None  # where torch is not finite and got is the same value; None when torch is all finite

    @classmethod
    def of(cls, reference: np.ndarray, got: np.ndarray, rule: str) -> Difference:
        ref = reference.astype(np.float64)
        diff = got.astype(np.float64, copy=True)
        finite = np.isfinite(ref)
        exact = None
        if not finite.all():  # a non-finite torch value passes only when matched exactly
            exact = ~finite & ((ref == diff) | (np.isnan(ref) & np.isnan(diff)))
        with np.errstate(invalid="ignore"):
            np.subtract(diff, ref, out=diff)
        np.abs(diff, out=diff)
        magnitude = np.abs(ref, out=ref)
        if exact is not None:
            magnitude[~finite] = 0.0
        return cls(diff, magnitude, _scale(magnitude, rule), exact)

    def within(self, tol: Tolerances) -> bool:
        with np.errstate(invalid="ignore"):
            ok = self.diff <= tol.atol + tol.rtol * self.scale
        if self.exact is not None:
            ok |= self.exact
        return bool(np.all(ok))

    def needed_rtol(self, atol: float) -> float:
        """The smallest rtol at which the output passes; inf when none would."""
        with np.errstate(invalid="ignore"):
            excess = self.diff - atol
            off = ~(excess <= 0)  # NaN excess (a non-finite value not matched exactly) counts as off
        if self.exact is not None:
            off &= ~self.exact
        if not off.any():
            return 0.0
        excess, scale = excess[off], self.scale[off]
        if not np.all(np.isfinite(excess) & (scale > 0)):
            return math.inf
        return float(np.max(excess / scale))


def within_tolerance(reference: np.ndarray, got: np.ndarray, tol: Tolerances, rule: str = ROW_SCALE) -> bool:
    """``got`` agrees with the torch ``reference`` under ``rule`` (see the module docstring).

    A non-finite torch value must be matched exactly (the same infinity, or NaN at the same place).
    """
    if reference.shape != got.shape:
        return False
    return Difference.of(reference, got, rule).within(tol)


def needed_rtol(reference: np.ndarray, got: np.ndarray, atol: float, rule: str = ROW_SCALE) -> float:
    """The smallest rtol at which ``got`` agrees with ``reference`` under ``rule``; inf when none would."""
    if reference.shape != got.shape:
        return math.inf
    return Difference.of(reference, got, rule).needed_rtol(atol)


def limit_text(tol: Tolerances, rule: str) -> str:
    scale = "max|torch row|" if rule == ROW_SCALE else "|torch|"
    return f"|d| <= {tol.atol:g} + {tol.rtol:g}*{scale}"


@dataclass
class OutputStats:
    """Running max abs / rel / row-scaled difference of one output over many grid cases."""

    name: str
    tol: Tolerances
    rule: str = ROW_SCALE
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_scaled: float = 0.0  # |d| / the rule's scale: what rtol is compared with
    cases: int = 0
    failed: list[str] = field(default_factory=list)
    needed: dict[str, float] = field(default_factory=dict)  # failed case -> the rtol it would need
    widened: dict[str, float] = field(default_factory=dict)  # case -> the rtol its noise floor allowed

    def add(self, reference: np.ndarray, got: np.ndarray, label: str) -> None:
        self.cases += 1
        if reference.shape != got.shape:
            self.failed.append(f"{label}: shape {list(got.shape)} != torch {list(reference.shape)}")
            return
        d = Difference.of(reference, got, self.rule)
        if d.diff.size:
            self.max_abs = max(self.max_abs, float(np.nanmax(d.diff)) if not np.isnan(d.diff).all() else np.inf)
            self.max_rel = max(self.max_rel, _max_ratio(d.diff, d.magnitude))
            self.max_scaled = max(self.max_scaled, _max_ratio(d.diff, d.scale))
        if not d.within(self.tol):
            self.failed.append(label)
            self.needed[label] = d.needed_rtol(self.tol.atol)

    def widen(self, label: str, rtol: float) -> bool:
        """Let a failed case pass at ``rtol`` (its measured noise floor allows it) if that is enough."""
        if label not in self.failed or self.needed.get(label, math.inf) > rtol:
            return False
        self.failed.remove(label)
        self.widened[label] = rtol
        return True

    def check(self) -> Check:
        detail = f"{self.cases} cases" if not self.failed else f"fails at {', '.join(self.failed[:3])}"
        value = f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}"
        if self.rule == ROW_SCALE:
            value += f", max rel to row {self.max_scaled:.3g}"
        limit = limit_text(self.tol, self.rule)
        if self.widened:
            limit += f" (rtol {max(self.widened.values()):.3g} on {len(self.widened)} cases: float32 noise floor)"
        return Check(f"output {self.name}", not self.failed and self.cases > 0, value, limit, detail)


def _max_ratio(diff: np.ndarray, scale: np.ndarray) -> float:
    ratio = np.zeros(diff.shape)
    np.divide(diff, scale, out=ratio, where=(scale > 0) & np.isfinite(diff))
    return float(ratio.max()) if ratio.size else 0.0


# ---------------------------------------------------------------- graph checks


def graph_check(model_path: Path) -> Check:
    """onnx.checker (full check) and strict shape inference on the saved file.

    ``full_check`` runs shape inference in strict mode with type checks, on the file in
    onnx's C++ side. (A separate ``infer_shapes(onnx.load(...))`` used to repeat it in
    Python, holding three copies of a 400M-parameter graph's weights at once.)
    """
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except Exception as exc:  # the checker raises several types (ValidationError, InferenceError, OSError)
        return Check("onnx.checker + shape inference", False, "failed", "valid ONNX", first_line(exc))
    return Check("onnx.checker + shape inference", True, "valid", "full check, strict shape inference")


def graph_dims(value_info: Any) -> list[int | str]:
    """A graph input/output's shape: dim_param names for dynamic axes, numbers for fixed ones."""
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
            for d in value_info.type.tensor_type.shape.dim]


def graph_interface(model_path: Path) -> tuple[list[Any], list[Any]]:
    """The graph's input and output ValueInfoProtos, read once per version of the file.

    Export asks twice (the dynamic axes check, the manifest's signature); reading them means
    parsing the whole file (0.55 s for BERT-base's 440 MB), so they are kept, keyed by the
    file's identity, size and modification time: a graph written again is read again.
    """
    stat = model_path.stat()
    return _interface(str(model_path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _interface(path: str, *_identity: int) -> tuple[list[Any], list[Any]]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    # copies: the small protos outlive the parsed model and its weights
    return [copy.deepcopy(v) for v in graph.input], [copy.deepcopy(v) for v in graph.output]


def dynamic_axes_check(model_path: Path, inputs: list[tuple[str, list[Any]]],
                       outputs: list[tuple[str, list[Any]]]) -> Check:
    """Each declared dynamic axis (a string in the declared shape) must be a dim_param in the graph."""
    graph_inputs, graph_outputs = graph_interface(model_path)
    problems: list[str] = []
    for kind, declared, actual in (("input", inputs, graph_inputs), ("output", outputs, graph_outputs)):
        names = [v.name for v in actual]
        if [n for n, _ in declared] != names[: len(declared)] or len(names) != len(declared):
            problems.append(f"graph {kind}s {names} != declared {[n for n, _ in declared]}")
            continue
        for (name, shape), info in zip(declared, actual):
            dims = graph_dims(info)
            fixed = [f"{name}[{i}]={dims[i]}" for i, d in enumerate(shape)
                     if isinstance(d, str) and i < len(dims) and not isinstance(dims[i], str)]
            problems += [f"{f} is fixed, declared dynamic" for f in fixed]
    declared_count = sum(isinstance(d, str) for _, s in inputs + outputs for d in s)
    return Check("dynamic axes", not problems, f"{declared_count} declared axes", "dim_param in the graph",
                 "; ".join(problems[:4]))


# ---------------------------------------------------------------- onnxruntime


def ort_session(model_path: Path, optimization: str = "all", *, lean: bool = False) -> Any:
    """An onnxruntime CPU session at the given graph optimisation level (the runtime's is recorded).

    ``lean`` turns off onnxruntime's memory arena and pattern planning: verification runs a
    handful of calls, and a 1024-px model's arena would otherwise keep its peak for good.
    Worker threads sleep between calls instead of spinning: verification alternates onnxruntime
    with numpy comparisons, and spinning threads burn a core meanwhile (MiniLM's 9-case grid:
    ~5% of verify_model's CPU time on a machine at load average 4).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # shape-mismatch errors come back as exceptions; keep stderr clean
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[optimization])
    if lean:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def torch_references(module: Any, spec: ModelSpec, cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """torch's outputs on every grid case, one case at a time; computed once per export, whatever graph is tried."""
    from exporters.source import torch_outputs

    names = get_task(spec.task).output_names(spec)
    references = []
    for case in cases:
        with measure(case, "torch"):
            references.append(torch_outputs(module, case.inputs, names))
            gc.collect()  # a large-input model's activations go before the next case (and before onnxruntime)
    return references


@dataclass
class GridRun:
    """One graph's run over the grid: whether every case ran, each output's statistics, the task's agreement."""

    shape_grid: Check
    outputs: dict[str, OutputStats]
    agreement: Check
    noise: Check | None = None  # the float32 noise floor, when some case needed it
    floor: float = 0.0  # the largest floor measured (a share of the row)

    @property
    def checks(self) -> list[Check]:
        noise = [self.noise] if self.noise else []
        return [self.shape_grid, *(s.check() for s in self.outputs.values()), self.agreement, *noise]

    @property
    def widened_rtol(self) -> float:
        return max((r for s in self.outputs.values() for r in s.widened.values()), default=0.0)


def compare_grid(module: Any, spec: ModelSpec, model_path: Path, cases: list[Case], tol: Tolerances, *,
                 references: list[dict[str, np.ndarray]] | None = None, rule: str = ROW_SCALE,
                 optimization: str | None = None) -> tuple[list[Check], list[dict[str, np.ndarray]]]:
    """torch vs onnxruntime on every grid case; returns the checks and torch's outputs per case.

    ``references`` (torch's outputs, from ``torch_references``) are computed here when not given.
    A graph onnxruntime cannot load is a failed check, not an exception.
    """
    if references is None:
        references = torch_references(module, spec, cases)
    run = run_grid(spec, model_path, cases, references, tol, rule, optimization)
    return (run.checks if isinstance(run, GridRun) else [run]), references


def run_grid(spec: ModelSpec, model_path: Path, cases: list[Case], references: list[dict[str, np.ndarray]],
             tol: Tolerances, rule: str = ROW_SCALE, optimization: str | None = None) -> GridRun | Check:
    """The graph in onnxruntime on every case against torch's outputs; a failed Check if it does not load."""
    try:
        session = ort_session(model_path, optimization or spec.export.ort_optimization, lean=True)
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidGraph, Fail, ...)
        return Check("onnxruntime loads the graph", False, "refused", "InferenceSession", first_line(exc, 200))
    task = get_task(spec.task)
    stats = {name: OutputStats(name, tol, rule) for name in task.output_names(spec)}
    agreement = task.agreement(spec, tol)
    rejected: list[str] = []
    for case, reference in zip(cases, references):
        try:
            with measure(case, "onnxruntime"):
                got = run_session(session, case.inputs)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidArgument, Fail, ...)
            rejected.append(f"{case.label}: {str(exc).strip().splitlines()[-1][:160]}")
            continue
        for name, ref in reference.items():
            stats[name].add(ref, got.get(name, np.empty(0)), case.label)
        agreement.add(reference, got, case)
    del session
    gc.collect()
    grid = Check("shape grid", not rejected, f"{len(cases) - len(rejected)}/{len(cases)} cases ran",
                 "all cases", "; ".join(rejected[:3]))
    return GridRun(grid, stats, agreement.check())


# ---------------------------------------------------------------- the float32 noise floor


class NoiseFloor:
    """How far torch's own float32 outputs are from a float64 run of the same model, case by case.

    Measured only for cases where some output misses rtol, once per case however many
    graphs are tried (float64 doubles the model's memory for a while), and only where the
    memory plan says the float64 run fits the budget. A model that cannot run in float64
    has no floor, and its failures stand.
    """

    def __init__(self, module: Any, spec: ModelSpec, cases: list[Case], references: list[dict[str, np.ndarray]],
                 step: Any = None) -> None:
        self.module, self.spec, self.cases, self.references = module, spec, cases, references
        self.step = step or (lambda _msg: None)
        self.floors: dict[int, dict[str, float]] = {}
        self.problem = ""  # why the floor could not be measured
        self.over_budget: dict[int, str] = {}  # case index -> why its float64 run was left out

    def measure(self, indices: list[int]) -> dict[int, dict[str, float]]:
        """Per case in ``indices``: output name -> max |torch32 - torch64| / the rule's scale of torch64."""
        for i in indices:
            memory = self.cases[i].memory
            if memory is not None and (need := float64_estimate(memory)) > memory.budget:
                self.over_budget[i] = (f"{self.cases[i].label}: a float64 run needs ~{size_text(need)}, over the "
                                       f"{size_text(memory.budget)} memory budget")
        todo = [i for i in indices if i not in self.floors and i not in self.over_budget]
        if todo and not self.problem:
            self.step(f"float64 torch run on {len(todo)} cases that miss the tolerance (float32 noise floor)")
            try:
                self.floors.update(self._float64(todo))
            except Exception as exc:  # an op without a float64 kernel, or float32 constants in forward
                self.problem = f"the model does not run in float64 ({type(exc).__name__}: {first_line(exc, 120)})"
        return {i: self.floors[i] for i in indices if i in self.floors}

    def _float64(self, indices: list[int]) -> dict[int, dict[str, float]]:
        import torch

        from exporters.source import torch_outputs

        names = get_task(self.spec.task).output_names(self.spec)
        default = torch.get_default_dtype()
        module = copy.deepcopy(self.module).to(torch.float64)
        floors = {}
        try:
            torch.set_default_dtype(torch.float64)  # tensors the forward creates follow the weights
            for index in indices:
                inputs = {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                          for k, v in self.cases[index].inputs.items()}
                exact = torch_outputs(module, inputs, names, keep_dtype=True)
                floors[index] = {name: _max_ratio(np.abs(self.references[index][name] - value),
                                                  reference_scale(value))
                                 for name, value in exact.items() if value.dtype.kind == "f"}
                gc.collect()
        finally:
            torch.set_default_dtype(default)
            del module
            gc.collect()
        return floors


def allow_noise(run: GridRun, cases: list[Case], noise: NoiseFloor, tol: Tolerances) -> None:
    """Let cases that miss rtol pass within NOISE_FACTOR x their measured float32 noise floor (row-scale only)."""
    index = {case.label: i for i, case in enumerate(cases)}
    missed = sorted({index[label] for s in run.outputs.values() for label in s.failed if label in index})
    if not missed or not run.shape_grid.passed or not run.agreement.passed:
        return  # nothing to measure, or the graph fails regardless
    floors = noise.measure(missed)
    accepted, floor_max = 0, 0.0
    refused = [noise.over_budget[i] for i in missed if i in noise.over_budget]
    for stats in run.outputs.values():
        for label in list(stats.failed):
            floor = floors.get(index.get(label, -1), {}).get(stats.name)
            if floor is None:
                continue
            floor_max = max(floor_max, floor)
            allowed = min(NOISE_RTOL_CAP, max(tol.rtol, NOISE_FACTOR * floor))
            if stats.widen(label, allowed):
                accepted += 1
            else:
                refused.append(f"{stats.name} at {label} needs rtol {stats.needed[label]:.3g}, floor {floor:.3g}")
    limit = f"graph within {NOISE_FACTOR:g}x the floor of torch (rtol at most {NOISE_RTOL_CAP:g})"
    if (noise.problem or refused) and not floors:
        run.noise = Check("float32 noise floor", False, "not measured", limit, noise.problem or "; ".join(refused[:3]))
        return
    run.floor = floor_max
    run.noise = Check("float32 noise floor", not refused,
                      f"torch float32 vs float64: max {floor_max:.3g} of row", limit,
                      "; ".join(refused[:3]) if refused else f"{accepted} output cases pass within it")


def verify_model(module: Any, spec: ModelSpec, model_path: Path, cases: list[Case], *,
                 references: list[dict[str, np.ndarray]] | None = None, optimization: str | None = None,
                 noise: NoiseFloor | None = None) -> tuple[VerifyReport, list[dict[str, np.ndarray]]]:
    """The export-time verification: graph checks, dynamic axes, the torch/onnxruntime grid.

    ``optimization`` is the onnxruntime graph optimisation level to verify at (default: the spec's).
    ``noise`` measures the float32 noise floor of cases that miss rtol (one per export, shared by
    every graph tried); without it such cases fail.
    """
    start = time.perf_counter()
    tol = spec.verify
    outputs = get_task(spec.task).output_axes(spec)
    checks = [graph_check(model_path),
              dynamic_axes_check(model_path, [(i.name, list(i.shape)) for i in spec.inputs], list(outputs.items()))]
    if references is None:
        references = torch_references(module, spec, cases)
    run = run_grid(spec, model_path, cases, references, tol, ROW_SCALE, optimization)
    record = tolerance_record(tol)
    if isinstance(run, GridRun):
        if noise is not None:
            allow_noise(run, cases, noise, tol)
        if run.noise is not None and run.noise.passed and run.widened_rtol:
            widened = replace(tol, rtol=run.widened_rtol)
            count = len({label for s in run.outputs.values() for label in s.widened})
            record = tolerance_record(widened, ROW_SCALE, f"rtol {tol.rtol:g} -> {run.widened_rtol:.3g}: on {count} "
                                      f"grid cases torch float32 itself is up to {run.floor:.3g} of a row from "
                                      f"float64, and the graph may be {NOISE_FACTOR:g}x that from torch")
        checks += run.checks + _sequence_checks(module, spec, model_path, cases, tol, optimization)
    else:
        checks.append(run)
    report = VerifyReport(subject=spec.name, checks=checks,
                          shapes=sorted({c.label.rsplit(" seed", 1)[0] for c in cases}),
                          seeds=sorted({c.seed for c in cases}), tolerances=record,
                          memory=memory_record(cases))
    report.seconds = time.perf_counter() - start
    return report, references


def _sequence_checks(module: Any, spec: ModelSpec, model_path: Path, cases: list[Case], tol: Tolerances,
                     optimization: str | None) -> list[Check]:
    """The task's step-by-step checks (a decoder fed its own cache), in a session of their own."""
    task = get_task(spec.task)
    if type(task).sequence_checks is Task.sequence_checks:
        return []  # the task has none: no second session
    session = ort_session(model_path, optimization or spec.export.ort_optimization, lean=True)
    try:
        return task.sequence_checks(module, spec, session, cases, tol, within_tolerance)
    finally:
        del session
        gc.collect()


# ---------------------------------------------------------------- artifacts


def verify_artifact(path: str | Path, *, against_source: bool = False, engine: str | None = None) -> VerifyReport:
    """Re-check an artifact on its own: hashes, checker, dynamic axes, golden data replay.

    The golden data replay on ``engine`` ("onnxruntime" | "openvino"), by default the engine and
    precision the manifest names (the ones its golden data were written under).

    ``against_source`` also rebuilds the source model and re-runs the torch grid.
    A folder that does not match its manifest (unsafe paths, changed, missing or
    unlisted files, a file that does not parse) is refused with ArtifactError before
    anything in it is parsed; a graph that misbehaves raises VerificationError
    (carrying the report).
    """
    start = time.perf_counter()
    folder = Path(path)
    manifest = read_manifest(folder)
    hashes = files_check(folder, manifest)  # first: nothing is parsed before its hash matched
    tol, rule = read_tolerances(manifest.tolerances, str(folder / "manifest.json"))
    model_path = folder / MODEL_FILE
    _parse_model(model_path)
    spec = manifest.model_spec()
    checks = [hashes, preprocessor_check(folder, manifest), graph_check(model_path),
              dynamic_axes_check(model_path, [(i.name, list(i.shape)) for i in spec.inputs],
                                 [(o.name, list(o.shape)) for o in manifest.outputs])]
    chosen = engines.choose(manifest, engine)
    checks += golden_checks(folder, model_path, tol, rule, _recorded_level(manifest), chosen)
    graphs = manifest.preprocess.get("graphs")
    if graphs:  # an encoder-decoder's encoder.onnx: checked and replayed like model.onnx
        checks += companion_checks(folder, graphs, tol, rule, _recorded_level(manifest), chosen)
    report = VerifyReport(subject=str(folder), checks=checks, tolerances=tolerance_record(tol, rule))
    if against_source:
        _add_source_checks(report, folder, manifest)
    report.seconds = time.perf_counter() - start
    if not report.passed:
        raise VerificationError(f"artifact {folder} failed verification: {report.summary()}", report)
    return report


def files_check(folder: Path, manifest: Manifest) -> Check:
    """Every listed file present with its size and sha256, nothing unlisted; else ArtifactError (refused)."""
    check_artifact(folder, manifest, strict=True)
    return Check("file hashes (sha256)", True, f"{len(manifest.files)} files", "match the manifest")


def _parse_model(model_path: Path) -> None:
    """A model.onnx that is not an ONNX protobuf at all is a damaged file, not a failed check."""
    import onnx

    try:
        onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError lives in a private module; onnx adds its own types
        raise ArtifactError(f"{model_path} is not a readable ONNX model ({first_line(exc, 160)}); the file is "
                            "damaged: re-export the artifact, or copy it again intact") from exc


def preprocessor_check(folder: Path, manifest: Manifest) -> Check:
    """The files a torch-free runtime needs to preprocess inputs are all there and loadable."""
    names = list(manifest.preprocess.get("files", []))
    missing = [n for n in names if not (folder / n).is_file()]
    missing += get_task(manifest.task).preprocessor_problems(folder, manifest)
    return Check("preprocessor files", not missing, f"{len(names)} files", "present and loadable",
                 "; ".join(missing[:4]))


def _recorded_level(manifest: Manifest) -> str:
    return manifest.model_spec().export.ort_optimization


def golden_checks(folder: Path, model_path: Path, tol: Tolerances, rule: str = ROW_SCALE,
                  optimization: str = "all", engine: Engine | None = None) -> list[Check]:
    """Replay every test_data_set_N through ``engine`` (onnxruntime at the recorded level unless given) against its
    stored outputs, each output looked up by name."""
    from exporters.golden import golden_sets, read_golden

    sets = golden_sets(folder)
    if not sets:
        return [Check("golden data", False, "0 data sets", ">= 1", "test_data_set_N folders are missing")]
    engine = engine or Engine()
    try:
        if engine.name == "onnxruntime":
            session = ort_session(model_path, optimization, lean=True)
        else:
            session = engines.open_session(model_path, engine)
    except Exception as exc:  # a damaged graph cannot even be loaded
        return [Check("golden data", False, "model.onnx does not load", "", first_line(exc, 200))]
    checks = []
    for data_set in sets:
        inputs, outputs = read_golden(data_set)
        stats = OutputStats(data_set.name, tol, rule)
        try:
            got = run_session(session, inputs)
            for name, expected in outputs.items():
                stats.add(expected, got.get(name, np.empty(0)), name)
        except Exception as exc:  # onnxruntime's pybind errors; the message says what went wrong
            stats.failed.append(str(exc).strip().splitlines()[-1][:160])
        check = stats.check()
        check.name = f"golden {data_set.name}" + ("" if engine == Engine() else f" on {engine.label}")
        checks.append(check)
    return checks


def _add_source_checks(report: VerifyReport, folder: Path, manifest: Manifest) -> None:
    from exporters.source import build_source

    if manifest.random_init and manifest.seed is None:
        raise ConfigError(f"{folder} was exported from unseeded random weights (--random-init, before zoo recorded "
                          "the seed); --against-source cannot rebuild them: run 'zoo verify' without it")
    spec = manifest.source_spec()  # refuses trust_remote_code from an artifact
    try:
        # a seeded random-init export rebuilds the very same weights from its recorded seed
        source = build_source(spec, random_init=manifest.random_init, seed=manifest.seed or 0,
                              model_kwargs=manifest.model_kwargs)
    except ZooError as exc:
        # asked for explicitly, so a source that no longer resolves is a failure, not a skip
        report.checks.append(Check("source model", False, "unavailable", spec.source_name, str(exc)[:300]))
        return
    tol, rule = read_tolerances(report.tolerances)
    cases = plan_grid(source.task, spec, source.module, source.processor, source.cases)
    checks, _ = compare_grid(source.module, spec, folder / MODEL_FILE, cases, tol, rule=rule)
    report.checks += [Check(f"source: {c.name}", c.passed, c.value, c.limit, c.detail) for c in checks]
    report.shapes = sorted({c.label.rsplit(" seed", 1)[0] for c in cases})
    report.seeds = sorted({c.seed for c in cases})
    report.memory = memory_record(cases)


def report_tol(report: VerifyReport) -> Tolerances:
    return read_tolerances(report.tolerances)[0]


def golden_folder(file: str) -> str:
    return Path(file).stem


def companion_checks(folder: Path, graphs: dict[str, Any], tol: Tolerances, rule: str = ROW_SCALE,
                     optimization: str = "all", engine: Engine | None = None) -> list[Check]:
    """``zoo verify``'s checks of each recorded companion graph: checker, dynamic axes, golden data replay."""
    checks: list[Check] = []
    for name, record in graphs.items():
        path = artifact_path(folder, record["file"])
        declared = [(i["name"], list(i["shape"])) for i in record["inputs"]]
        outputs = [(o["name"], list(o["shape"])) for o in record["outputs"]]
        own = [graph_check(path), dynamic_axes_check(path, declared, outputs)]
        own += golden_checks(artifact_path(folder, record["golden"]), path, tol, rule, optimization, engine)
        checks += [named_check(c, name) for c in own]
    return checks


def named_check(check: Check, graph: str) -> Check:
    check.name = f"{graph}: {check.name}"
    return check
