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

from zoo.artifact import MODEL_FILE, check_files, read_manifest
from zoo.errors import ArtifactError, ConfigError, VerificationError, ZooError
from zoo.spec import CLASSIFIER_TASKS, ModelSpec, Tolerances



@dataclass
class Check:
    """One line of the report: what was checked, the measured value and the limit it must meet."""

    name: str
    passed: bool
    value: str = ""
    limit: str = ""
    detail: str = ""


@dataclass
class VerifyReport:
    """Every check run on one export or artifact; ``passed`` only when all of them passed."""

    subject: str
    checks: list[Check] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tolerances: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        data = {k: v for k, v in data.items() if k != "passed"}
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**data)

    def summary(self) -> str:
        failed = "; ".join(f"{c.name}: {c.value}" + (f" (limit {c.limit})" if c.limit else "")
                           + (f" [{c.detail}]" if c.detail else "") for c in self.failures)
        head = f"{len(self.checks) - len(self.failures)}/{len(self.checks)} checks passed"
        return head + (f"; failed: {failed}" if failed else "")

    def table(self, *, compact: bool | None = None) -> Any:
        """A rich table; compact (name, result, value) when everything passed."""
        from rich.markup import escape
        from rich.table import Table

        compact = self.passed if compact is None else compact
        status = "[green]verified[/green]" if self.passed else "[red]FAILED[/red]"
        grid = f"{len(self.shapes)} distinct shapes, {len(self.seeds)} seeds" if self.shapes else ""
        table = Table(title=f"{escape(self.subject)}: {status} {grid} ({self.seconds:.1f}s)")
        columns = ("check", "result", "value") if compact else ("check", "result", "value", "limit", "detail")
        for column in columns:
            table.add_column(column, overflow="fold")
        for c in self.checks:
            mark = "[green]ok[/green]" if c.passed else "[red]FAIL[/red]"
            row = [escape(c.name), mark, escape(c.value)]
            if not compact:
                row += [escape(c.limit), escape(c.detail)]
            table.add_row(*row)
        return table


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


def classifier_agreement(reference: np.ndarray, got: np.ndarray, tol: Tolerances,
                         mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """(rows compared, disagreements, ties excused) of the top-1 class.

    A disagreement where torch's own top-2 margin is within tolerance is a tie
    (both answers are equally right within the stated precision), not a failure.
    """
    ref_top = reference.argmax(-1)
    got_top = got.argmax(-1)
    keep = np.ones(ref_top.shape, dtype=bool) if mask is None else mask.astype(bool)
    differ = (ref_top != got_top) & keep
    ref_best = np.take_along_axis(reference, ref_top[..., None], -1)[..., 0].astype(np.float64)
    ref_other = np.take_along_axis(reference, got_top[..., None], -1)[..., 0].astype(np.float64)
    tie = (ref_best - ref_other) <= tol.atol + tol.rtol * np.abs(ref_best)
    return int(keep.sum()), int((differ & ~tie).sum()), int((differ & tie).sum())


def cosines(reference: np.ndarray, got: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity per row (pooled embeddings) or per real token (hidden states)."""
    ref = reference.astype(np.float64)
    out = got.astype(np.float64)
    if ref.ndim == 3 and mask is not None:
        keep = mask.astype(bool)
        ref, out = ref[keep], out[keep]
    ref = ref.reshape(-1, ref.shape[-1])
    out = out.reshape(-1, out.shape[-1])
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    return (ref * out).sum(1) / np.maximum(norms, 1e-30)


class TaskStats:
    """Top-1 agreement (classifiers) or minimum cosine (embeddings) over the grid."""

    def __init__(self, spec: ModelSpec, tol: Tolerances):
        self.spec, self.tol = spec, tol
        self.rows = self.wrong = self.ties = 0
        self.min_cos = 1.0

    def add(self, reference: np.ndarray, got: np.ndarray, inputs: dict[str, np.ndarray]) -> None:
        if reference.shape != got.shape:
            self.wrong += 1  # counted by the output check too; a shape error can never agree
            return
        mask = inputs.get("attention_mask")
        if self.spec.task in CLASSIFIER_TASKS:
            token_mask = mask if self.spec.task == "token-classification" else None
            rows, wrong, ties = classifier_agreement(reference, got, self.tol, token_mask)
            self.rows, self.wrong, self.ties = self.rows + rows, self.wrong + wrong, self.ties + ties
        else:
            values = cosines(reference, got, mask)
            self.rows += len(values)
            self.min_cos = min(self.min_cos, float(np.nan_to_num(values.min(), nan=-1.0)) if len(values) else 1.0)

    def check(self) -> Check:
        if self.spec.task in CLASSIFIER_TASKS:
            unit = "tokens" if self.spec.task == "token-classification" else "rows"
            share = 100.0 * (self.rows - self.wrong) / max(self.rows, 1)
            detail = f"{self.rows} {unit}" + (f", {self.ties} ties within tolerance" if self.ties else "")
            return Check("top-1 agreement", self.wrong == 0 and self.rows > 0, f"{share:.2f}%", "100%", detail)
        return Check("cosine similarity", self.min_cos >= self.tol.cosine and self.rows > 0,
                     f"min {self.min_cos:.6f}", f">= {self.tol.cosine:g}", f"{self.rows} vectors")


# ---------------------------------------------------------------- graph checks


def graph_check(model_path: Path) -> Check:
    """onnx.checker (full check) and strict shape inference on the saved file."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), check_type=True, strict_mode=True)
    except Exception as exc:  # the checker raises several types (ValidationError, InferenceError, OSError)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return Check("onnx.checker + shape inference", False, "failed", "valid ONNX", first)
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


def torch_outputs(module: Any, inputs: dict[str, np.ndarray], output: str) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        result = module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {output: result.detach().cpu().float().numpy()}


def compare_grid(module: Any, spec: ModelSpec, model_path: Path, cases: list[Any], tol: Tolerances,
                 output: str) -> tuple[list[Check], list[dict[str, np.ndarray]]]:
    """torch vs onnxruntime on every grid case; returns the checks and torch's outputs per case."""
    session = ort_session(model_path)
    stats: dict[str, OutputStats] = {}
    task = TaskStats(spec, tol)
    rejected: list[str] = []
    references: list[dict[str, np.ndarray]] = []
    for case in cases:
        reference = torch_outputs(module, case.inputs, output)
        references.append(reference)
        try:
            got = run_session(session, case.inputs)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidArgument, Fail, ...)
            rejected.append(f"{case.label}: {str(exc).strip().splitlines()[-1][:160]}")
            continue
        for name, ref in reference.items():
            stats.setdefault(name, OutputStats(name, tol)).add(ref, got.get(name, np.empty(0)), case.label)
        task.add(reference[output], got.get(output, np.empty(0)), case.inputs)
    checks = [Check("shape grid", not rejected, f"{len(cases) - len(rejected)}/{len(cases)} cases ran",
                    "all cases", "; ".join(rejected[:3]))]
    checks += [s.check() for s in stats.values()] or [Check(f"output {output}", False, "never compared")]
    checks.append(task.check())
    return checks, references


def verify_model(module: Any, spec: ModelSpec, model_path: Path, cases: list[Any],
                 output: str) -> tuple[VerifyReport, list[dict[str, np.ndarray]]]:
    """The export-time verification: graph checks, dynamic axes, the torch/onnxruntime grid."""
    start = time.perf_counter()
    tol = spec.verify
    checks = [graph_check(model_path),
              dynamic_axes_check(model_path, [(i.name, list(i.shape)) for i in spec.inputs],
                                 [(output, expected_output_shape(spec))])]
    grid_checks, references = compare_grid(module, spec, model_path, cases, tol, output)
    report = VerifyReport(subject=spec.name, checks=checks + grid_checks,
                          shapes=sorted({c.label.rsplit(" seed", 1)[0] for c in cases}),
                          seeds=sorted({c.seed for c in cases}), tolerances=asdict(tol))
    report.seconds = time.perf_counter() - start
    return report, references


def expected_output_shape(spec: ModelSpec) -> list[str | None]:
    """Which output axes must stay dynamic: batch always, sequence for per-token outputs."""
    per_token = spec.task == "token-classification" or (spec.task == "feature-extraction"
                                                        and not spec.preprocess.pooling)
    return ["batch", "sequence", None] if per_token else ["batch", None]


# ---------------------------------------------------------------- tokenizer files


def runtime_tokenizer(folder: Path, preprocess: dict[str, Any]) -> Any:
    """``tokenizers`` alone, set up from the manifest: what a torch-free runtime would do."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.enable_truncation(max_length=int(preprocess["max_length"]),
                          direction=preprocess.get("truncation_side", "right"))
    tok.enable_padding(direction=preprocess.get("padding_side", "right"), pad_id=int(preprocess["pad_token_id"]),
                       pad_type_id=int(preprocess.get("pad_type_id", 0)), pad_token=preprocess["pad_token"])
    return tok


def tokenizer_file_check(folder: Path, preprocess: dict[str, Any], cases: list[Any]) -> Check:
    """tokenizer.json + the manifest's settings must give the same ids as the model's tokenizer."""
    if not (Path(folder) / "tokenizer.json").is_file():
        return Check("tokenizer.json", False, "missing", "present", "a torch-free runtime cannot tokenise")
    tok = runtime_tokenizer(folder, preprocess)
    keys = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    mismatched = []
    for case in cases:
        encodings = tok.encode_batch(case.texts)
        for name, expected in case.inputs.items():
            got = np.asarray([getattr(e, keys[name]) for e in encodings], dtype=np.int64)
            if name == "token_type_ids" and not got.any() and not expected.any():
                continue
            if got.shape != expected.shape or not np.array_equal(got, expected):
                mismatched.append(f"{case.label} {name}")
    return Check("tokenizer.json reproduces tokenisation", not mismatched, f"{len(cases)} cases",
                 "identical ids and masks", "; ".join(mismatched[:3]))


# ---------------------------------------------------------------- artifacts


def verify_artifact(path: str | Path, *, against_source: bool = False) -> VerifyReport:
    """Re-check an artifact on its own: hashes, checker, dynamic axes, golden data replay.

    ``against_source`` also rebuilds the source model and re-runs the torch grid.
    Raises VerificationError (carrying the report) when any check fails.
    """
    start = time.perf_counter()
    folder = Path(path)
    manifest = read_manifest(folder)
    tol = Tolerances(**manifest.get("tolerances", {}))
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{model_path} is missing; the artifact is incomplete, re-export it with 'zoo export'")
    checks = [files_check(folder, manifest), preprocessor_check(folder, manifest), graph_check(model_path),
              dynamic_axes_check(model_path, [(i["name"], i["shape"]) for i in manifest["spec"]["inputs"]],
                                 [(o["name"], o["shape"]) for o in manifest["outputs"]])]
    checks += golden_checks(folder, model_path, tol)
    report = VerifyReport(subject=str(folder), checks=checks, tolerances=asdict(tol))
    if against_source:
        _add_source_checks(report, folder, manifest)
    report.seconds = time.perf_counter() - start
    if not report.passed:
        raise VerificationError(f"artifact {folder} failed verification: {report.summary()}", report)
    return report


def files_check(folder: Path, manifest: dict[str, Any]) -> Check:
    problems = check_files(folder, manifest)
    listed = set(manifest.get("files", {}))
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != "manifest.json" and p.relative_to(folder).as_posix() not in listed)
    problems += [f"{rel}: not in the manifest" for rel in extra]
    return Check("file hashes (sha256)", not problems and bool(listed), f"{len(listed)} files",
                 "match the manifest", "; ".join(problems[:4]))


def preprocessor_check(folder: Path, manifest: dict[str, Any]) -> Check:
    """The files a torch-free runtime needs to preprocess inputs are all there and loadable."""
    preprocess = manifest.get("preprocess", {})
    names = list(preprocess.get("files", []))
    missing = [n for n in names if not (folder / n).is_file()]
    if manifest.get("task") in ("text-classification", "token-classification", "feature-extraction"):
        if "tokenizer.json" not in names:
            missing.append("tokenizer.json (not listed)")
        elif not missing:
            try:
                runtime_tokenizer(folder, preprocess).encode("zoo checks the tokenizer")
            except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
                missing.append(f"tokenizer.json unreadable: {exc}")
    elif not preprocess.get("input_size"):
        missing.append("input_size (image preprocessing) not recorded")
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
        return [Check("golden data", False, "model.onnx does not load", "", str(exc).splitlines()[0][:200])]
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


def _add_source_checks(report: VerifyReport, folder: Path, manifest: dict[str, Any]) -> None:
    from exporters.onnx import build_source

    if manifest.get("random_init"):
        raise ConfigError(f"{folder} was exported from random weights (--random-init); --against-source has "
                          "no source to compare with: run 'zoo verify' without it")
    spec = ModelSpec.from_dict(manifest["spec"])
    try:
        source = build_source(spec, random_init=False)
    except ZooError as exc:
        # asked for explicitly, so a source that no longer resolves is a failure, not a skip
        report.checks.append(Check("source model", False, "unavailable", spec.source_name, str(exc)[:300]))
        return
    checks, _ = compare_grid(source.module, spec, folder / MODEL_FILE, source.cases, report_tol(report),
                             manifest["outputs"][0]["name"])
    report.checks += [Check(f"source: {c.name}", c.passed, c.value, c.limit, c.detail) for c in checks]
    report.shapes = sorted({c.label.rsplit(" seed", 1)[0] for c in source.cases})
    report.seeds = sorted({c.seed for c in source.cases})


def report_tol(report: VerifyReport) -> Tolerances:
    return Tolerances(**report.tolerances)
