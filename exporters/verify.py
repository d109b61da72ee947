"""Prove an ONNX graph behaves like its torch model, and re-check artifacts on their own.

    zoo verify artifacts/minilm-l6                  # hashes, checker, golden data replay
    zoo verify artifacts/minilm-l6 --against-source # plus the full torch comparison

Outputs are judged like ``allclose``: |onnx - torch| <= atol + rtol * |torch|,
with the torch value as the reference (random-initialised models can emit
logits of 1e8 and more, where only a relative tolerance is meaningful).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifact import MODEL_FILE, check_artifact, read_manifest
from zoo.checks import Check, VerifyReport
from zoo.errors import ArtifactError, ConfigError, VerificationError, ZooError, first_line
from zoo.manifest import Manifest
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks import get_task
from zoo.tasks.base import Case

__all__ = ["Check", "VerifyReport", "compare_grid", "verify_artifact", "verify_model", "within_tolerance"]


# ---------------------------------------------------------------- comparisons


@dataclass
class OutputStats:
    """Running max abs / max rel difference of one output over many grid cases."""

    name: str
    tol: Tolerances
    max_abs: float = 0.0
    max_rel: float = 0.0
    cases: int = 0
    failed: list[str] = field(default_factory=list)

    def add(self, reference: np.ndarray, got: np.ndarray, label: str) -> None:
        self.cases += 1
        if reference.shape != got.shape:
            self.failed.append(f"{label}: shape {list(got.shape)} != torch {list(reference.shape)}")
            return
        ref = reference.astype(np.float64)
        diff = np.abs(got.astype(np.float64) - ref)
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.nanmax(diff)) if not np.isnan(diff).all() else np.inf)
            nonzero = np.abs(ref) > 0
            if nonzero.any():
                self.max_rel = max(self.max_rel, float(np.nanmax(diff[nonzero] / np.abs(ref[nonzero]))))
        if not within_tolerance(reference, got, self.tol):
            self.failed.append(label)

    def check(self) -> Check:
        detail = f"{self.cases} cases" if not self.failed else f"fails at {', '.join(self.failed[:3])}"
        return Check(f"output {self.name}", not self.failed and self.cases > 0,
                     f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}",
                     f"|d| <= {self.tol.atol:g} + {self.tol.rtol:g}*|torch|", detail)


def within_tolerance(reference: np.ndarray, got: np.ndarray, tol: Tolerances) -> bool:
    """allclose with torch as the reference: the relative part scales with |torch|, never |onnx|.

    NaN anywhere fails (a NaN comparison is False), unless both sides are NaN at the same place.
    """
    if reference.shape != got.shape:
        return False
    ref = reference.astype(np.float64)
    out = got.astype(np.float64)
    both_nan = np.isnan(ref) & np.isnan(out)
    ok = np.abs(out - ref) <= tol.atol + tol.rtol * np.abs(ref)
    return bool(np.all(ok | both_nan))


# ---------------------------------------------------------------- graph checks


def graph_check(model_path: Path) -> Check:
    """onnx.checker (full check) and strict shape inference on the saved file."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), check_type=True, strict_mode=True)
    except Exception as exc:  # the checker raises several types (ValidationError, InferenceError, OSError)
        return Check("onnx.checker + shape inference", False, "failed", "valid ONNX", first_line(exc))
    return Check("onnx.checker + shape inference", True, "valid", "full check, strict shape inference")


def graph_dims(value_info: Any) -> list[int | str]:
    """A graph input/output's shape: dim_param names for dynamic axes, numbers for fixed ones."""
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
            for d in value_info.type.tensor_type.shape.dim]


def dynamic_axes_check(model_path: Path, inputs: list[tuple[str, list[Any]]],
                       outputs: list[tuple[str, list[Any]]]) -> Check:
    """Each declared dynamic axis (a string in the declared shape) must be a dim_param in the graph."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    problems: list[str] = []
    for kind, declared, actual in (("input", inputs, graph.input), ("output", outputs, graph.output)):
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


def ort_session(model_path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # shape-mismatch errors come back as exceptions; keep stderr clean
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def compare_grid(module: Any, spec: ModelSpec, model_path: Path, cases: list[Case],
                 tol: Tolerances) -> tuple[list[Check], list[dict[str, np.ndarray]]]:
    """torch vs onnxruntime on every grid case; returns the checks and torch's outputs per case."""
    from exporters.source import torch_outputs

    task = get_task(spec.task)
    names = task.output_names(spec)
    session = ort_session(model_path)
    stats = {name: OutputStats(name, tol) for name in names}
    agreement = task.agreement(spec, tol)
    rejected: list[str] = []
    references: list[dict[str, np.ndarray]] = []
    for case in cases:
        reference = torch_outputs(module, case.inputs, names)
        references.append(reference)
        try:
            got = run_session(session, case.inputs)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidArgument, Fail, ...)
            rejected.append(f"{case.label}: {str(exc).strip().splitlines()[-1][:160]}")
            continue
        for name, ref in reference.items():
            stats[name].add(ref, got.get(name, np.empty(0)), case.label)
        agreement.add(reference, got, case)
    checks = [Check("shape grid", not rejected, f"{len(cases) - len(rejected)}/{len(cases)} cases ran",
                    "all cases", "; ".join(rejected[:3]))]
    checks += [s.check() for s in stats.values()]
    checks.append(agreement.check())
    return checks, references


def verify_model(module: Any, spec: ModelSpec, model_path: Path,
                 cases: list[Case]) -> tuple[VerifyReport, list[dict[str, np.ndarray]]]:
    """The export-time verification: graph checks, dynamic axes, the torch/onnxruntime grid."""
    start = time.perf_counter()
    tol = spec.verify
    outputs = get_task(spec.task).output_axes(spec)
    checks = [graph_check(model_path),
              dynamic_axes_check(model_path, [(i.name, list(i.shape)) for i in spec.inputs], list(outputs.items()))]
    grid_checks, references = compare_grid(module, spec, model_path, cases, tol)
    report = VerifyReport(subject=spec.name, checks=checks + grid_checks,
                          shapes=sorted({c.label.rsplit(" seed", 1)[0] for c in cases}),
                          seeds=sorted({c.seed for c in cases}), tolerances=asdict(tol))
    report.seconds = time.perf_counter() - start
    return report, references


# ---------------------------------------------------------------- artifacts


def verify_artifact(path: str | Path, *, against_source: bool = False) -> VerifyReport:
    """Re-check an artifact on its own: hashes, checker, dynamic axes, golden data replay.

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
    tol = Tolerances(**manifest.tolerances)
    model_path = folder / MODEL_FILE
    _parse_model(model_path)
    spec = manifest.model_spec()
    checks = [hashes, preprocessor_check(folder, manifest), graph_check(model_path),
              dynamic_axes_check(model_path, [(i.name, list(i.shape)) for i in spec.inputs],
                                 [(o.name, list(o.shape)) for o in manifest.outputs])]
    checks += golden_checks(folder, model_path, tol)
    report = VerifyReport(subject=str(folder), checks=checks, tolerances=asdict(tol))
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


def golden_checks(folder: Path, model_path: Path, tol: Tolerances) -> list[Check]:
    """Replay every test_data_set_N through onnxruntime against its stored outputs."""
    from exporters.golden import golden_sets, read_golden

    sets = golden_sets(folder)
    if not sets:
        return [Check("golden data", False, "0 data sets", ">= 1", "test_data_set_N folders are missing")]
    try:
        session = ort_session(model_path)
    except Exception as exc:  # a damaged graph cannot even be loaded
        return [Check("golden data", False, "model.onnx does not load", "", first_line(exc, 200))]
    checks = []
    for data_set in sets:
        inputs, outputs = read_golden(data_set)
        stats = OutputStats(data_set.name, tol)
        try:
            got = run_session(session, inputs)
            for name, expected in outputs.items():
                stats.add(expected, got.get(name, np.empty(0)), name)
        except Exception as exc:  # onnxruntime's pybind errors; the message says what went wrong
            stats.failed.append(str(exc).strip().splitlines()[-1][:160])
        check = stats.check()
        check.name = f"golden {data_set.name}"
        checks.append(check)
    return checks


def _add_source_checks(report: VerifyReport, folder: Path, manifest: Manifest) -> None:
    from exporters.source import build_source

    if manifest.random_init:
        raise ConfigError(f"{folder} was exported from random weights (--random-init); --against-source has "
                          "no source to compare with: run 'zoo verify' without it")
    spec = manifest.source_spec()  # refuses trust_remote_code from an artifact
    try:
        source = build_source(spec, random_init=False, model_kwargs=manifest.model_kwargs)
    except ZooError as exc:
        # asked for explicitly, so a source that no longer resolves is a failure, not a skip
        report.checks.append(Check("source model", False, "unavailable", spec.source_name, str(exc)[:300]))
        return
    checks, _ = compare_grid(source.module, spec, folder / MODEL_FILE, source.cases, report_tol(report))
    report.checks += [Check(f"source: {c.name}", c.passed, c.value, c.limit, c.detail) for c in checks]
    report.shapes = sorted({c.label.rsplit(" seed", 1)[0] for c in source.cases})
    report.seeds = sorted({c.seed for c in source.cases})


def report_tol(report: VerifyReport) -> Tolerances:
    return Tolerances(**report.tolerances)
