"""Every verification check, shown to fail when its fault is planted.

    .venv/bin/pytest tests/test_verify_faults.py -n 2
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ArtifactError, VerificationError
from zoo.spec import Tolerances


# one worker builds the module's artifacts once (make test runs --dist loadgroup)
pytestmark = pytest.mark.xdist_group("verify-faults")


@pytest.fixture(scope="module")
def text_source(tiny_text_classifier):
    from exporters.onnx import _as_spec
    from exporters.source import build_source

    return build_source(_as_spec(str(tiny_text_classifier), ()))


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


def _failed(exc: pytest.ExceptionInfo) -> dict[str, str]:
    return {c.name: c.detail for c in exc.value.report.failures}


# ---------------------------------------------------------------- artifact faults (zoo verify)


def _rehash(folder: Path) -> None:
    """Rewrite the manifest's hashes to match the folder: a forger who edits files and manifest alike."""
    from zoo.artifact import hash_files

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {rel: {"sha256": e.sha256, "size": e.size} for rel, e in hash_files(folder).items()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _tamper_head(folder: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    head = next(t for t in model.graph.initializer if t.name.endswith("fc.weight"))
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * 3.0 + 0.5, head.name))
    onnx.save(model, str(folder / "model.onnx"))


@pytest.mark.slow
def test_tampered_weight_is_refused_by_its_hash_before_parsing(timm_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(timm_artifact, tmp_path)
    _tamper_head(folder)
    with pytest.raises(ArtifactError, match="model.onnx: sha256 differs from the manifest"):
        verify_artifact(folder)


@pytest.mark.slow
def test_tampered_weight_with_forged_hashes_is_caught_by_golden_data(timm_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(timm_artifact, tmp_path)
    _tamper_head(folder)
    _rehash(folder)
    with pytest.raises(VerificationError) as info:
        verify_artifact(folder)
    failed = _failed(info)
    assert set(failed) == {"golden test_data_set_0", "golden test_data_set_1", "golden test_data_set_2"}, \
        "the tampered graph is still valid ONNX with matching hashes; only the golden data can catch it"


@pytest.mark.slow
def test_missing_preprocessor_file_is_refused(text_cls_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(text_cls_artifact, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json: missing"):
        verify_artifact(folder)


@pytest.mark.slow
def test_unlisted_tokenizer_fails_the_preprocessor_check(text_cls_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(text_cls_artifact, tmp_path)
    (folder / "tokenizer.json").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["preprocess"]["files"].remove("tokenizer.json")
    del manifest["files"]["tokenizer.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerificationError) as info:
        verify_artifact(folder)
    assert "tokenizer.json (not listed)" in _failed(info)["preprocessor files"]


@pytest.mark.slow
def test_missing_image_config_is_refused(timm_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(timm_artifact, tmp_path)
    (folder / "preprocess.json").unlink()
    with pytest.raises(ArtifactError, match="preprocess.json: missing"):
        verify_artifact(folder)


@pytest.mark.slow
def test_extra_and_missing_golden_files_are_refused(timm_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    folder = _copy(timm_artifact, tmp_path)
    (folder / "notes.txt").write_text("not part of the export")
    shutil.rmtree(folder / "test_data_set_1")
    with pytest.raises(ArtifactError) as info:
        verify_artifact(folder)
    assert "notes.txt: not in the manifest" in str(info.value)
    assert "test_data_set_1/input_0.pb: missing" in str(info.value)


def test_invalid_graph_fails_the_checker(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from exporters.verify import graph_check

    # a node reading a tensor that nothing produces
    node = helper.make_node("Add", ["x", "ghost"], ["y"])
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "bad.onnx"))
    check = graph_check(tmp_path / "bad.onnx")
    assert not check.passed and "ghost" in check.detail


def test_type_clash_fails_shape_inference(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from exporters.verify import graph_check

    def save(second: int) -> Path:
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
                  helper.make_tensor_value_info("b", second, [2])]
        graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        path = tmp_path / f"add-{second}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return path

    assert graph_check(save(TensorProto.FLOAT)).passed  # the twin: the same graph with matching types
    check = graph_check(save(TensorProto.INT64))
    assert not check.passed and "int64" in check.detail


def test_strict_shape_inference_error_fails_the_check(tmp_path: Path) -> None:
    """Concat of a rank-2 and a rank-3 tensor: only strict-mode shape inference reports it."""
    import onnx
    from onnx import TensorProto, helper

    from exporters.verify import graph_check

    def save(second: list[int]) -> Path:
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, second)]
        graph = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["y"], axis=0)], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])])
        path = tmp_path / f"concat-{len(second)}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return path

    assert graph_check(save([4, 3])).passed  # the twin: equal ranks
    broken = save([2, 3, 4])
    onnx.shape_inference.infer_shapes(onnx.load(str(broken)), strict_mode=False)  # lenient inference lets it by
    check = graph_check(broken)
    assert not check.passed and "Concat" in check.detail


# ---------------------------------------------------------------- export-time faults


@pytest.mark.slow
def test_static_shape_export_is_caught_by_the_grid(text_source, tmp_path: Path) -> None:
    from exporters.onnx import export_graph
    from exporters.verify import verify_model

    path = tmp_path / "static.onnx"
    export_graph(text_source.module, text_source.spec, text_source.example, path, dynamic=False)
    report, _ = verify_model(text_source.module, text_source.spec, path, text_source.cases)
    failed = {c.name: c for c in report.failures}
    assert "input_ids[0]=2 is fixed" in failed["dynamic axes"].detail
    assert "input_ids[1]=16 is fixed" in failed["dynamic axes"].detail
    assert failed["shape grid"].value.startswith("0/9 cases ran")
    assert not report.passed


@pytest.mark.slow
def test_perturbed_output_is_caught_and_nothing_is_written(tiny_timm_folder, tmp_path: Path) -> None:
    import torch

    from exporters.onnx import _as_spec, export_onnx
    from exporters.source import build_source

    class PerturbedGraph(torch.nn.Module):
        """Adds 0.05 only inside the exported graph: torch stays right, ONNX drifts."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            out = self.inner(pixel_values)
            # in every exporter's graph (dynamo and the TorchScript fallback), so no fallback can rescue it
            exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            return out + 0.05 if exporting else out

    wrapper = PerturbedGraph(build_source(_as_spec(str(tiny_timm_folder), ())).module)
    dest, kept = tmp_path / "artifact", tmp_path / "kept"
    with pytest.raises(VerificationError) as info:
        export_onnx(str(tiny_timm_folder), out=dest, module=wrapper, keep_failed=kept)
    failed = _failed(info)
    assert "fails at image [1x3x" in failed["output logits"]
    assert "output logits: max abs 0.05" in str(info.value)
    assert not dest.exists() and not list(tmp_path.glob(".artifact.partial-*"))
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["verified"] is False and manifest["verification"]["passed"] is False
    # every way out was tried before giving up, and the manifest says so
    tried = " | ".join(manifest["export_notes"])
    assert "dynamo graph at onnxruntime optimisation 'all' failed: output logits" in tried
    assert "dynamo graph at onnxruntime optimisation 'basic' failed" in tried
    assert "torchscript graph at onnxruntime optimisation 'basic' failed" in tried
    assert "Tried: dynamo graph" in str(info.value)


class IllConditioned:
    """Wraps a module so that torch float32 carries rounding noise of ~2e-3 of a row and the graph none.

    torch computes ``(out + A) - A`` with ``A`` 4e4 times the row's largest logit: float32 keeps ~7
    digits of the sum, so torch's own result is off by up to 2.4e-3 of the row (as ill-conditioned
    random weights make gemma4_vit_167m at 768 px), while float64 and the exported graph are exact.
    ``drift`` (a share of the row) is added inside the graph only: a real fault.
    """

    @staticmethod
    def wrap(inner, drift: float = 0.0):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                out = 100 * self.inner(pixel_values)  # logits well above atol
                scale = out.abs().amax(-1, keepdim=True)
                if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
                    return out + drift * scale
                offset = 4e4 * scale
                return (out + offset) - offset

        return Wrapped()


@pytest.mark.slow
def test_float32_noise_floor_passes_an_exact_graph_of_an_ill_conditioned_model(tiny_timm_folder,
                                                                              tmp_path: Path) -> None:
    from exporters.onnx import _as_spec, export_onnx
    from exporters.source import build_source
    from exporters.verify import verify_artifact

    inner = build_source(_as_spec(str(tiny_timm_folder), ())).module
    result = export_onnx(str(tiny_timm_folder), out=tmp_path / "artifact", module=IllConditioned.wrap(inner))
    checks = {c.name: c for c in result.report.checks}
    noise = checks["float32 noise floor"]
    assert noise.passed and "torch float32 vs float64: max" in noise.value
    assert "float32 noise floor" in checks["output logits"].limit
    floor = float(noise.value.split("max ")[1].split(" of row")[0])
    assert 1e-4 < floor < 3e-3, "the planted rounding is what was measured"
    tolerances = result.manifest.tolerances
    assert 1e-3 < tolerances["rtol"] <= 3 * floor * 1.002 and tolerances["widened"].startswith("rtol 0.001 -> ")
    assert verify_artifact(result.path).passed, "the golden data replays under the recorded, widened rtol"


@pytest.mark.slow
def test_float32_noise_floor_does_not_excuse_a_real_fault(tiny_timm_folder, tmp_path: Path) -> None:
    """The twins: a 5% drift on the ill-conditioned model; a 0.3% drift where torch float32 is exact."""
    from exporters.onnx import _as_spec, export_onnx
    from exporters.source import build_source

    inner = build_source(_as_spec(str(tiny_timm_folder), ())).module
    with pytest.raises(VerificationError) as info:
        export_onnx(str(tiny_timm_folder), out=tmp_path / "noisy", module=IllConditioned.wrap(inner, drift=0.05))
    failed = _failed(info)
    assert "needs rtol 0.05" in failed["float32 noise floor"] and "output logits" in failed
    assert not (tmp_path / "noisy").exists()

    class Drifted(torch_module()):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            import torch

            out = self.inner(pixel_values)
            exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            return out + 3e-3 * out.abs().amax(-1, keepdim=True) if exporting else out

    with pytest.raises(VerificationError) as info:
        export_onnx(str(tiny_timm_folder), out=tmp_path / "drift", module=Drifted())
    detail = _failed(info)["float32 noise floor"]
    needs = [float(x) for x in re.findall(r"needs rtol ([0-9.e+-]+),", detail)]
    floors = [float(x) for x in re.findall(r"floor ([0-9.e+-]+)", detail)]
    assert needs and all(1e-3 < n <= 3e-3 for n in needs), detail  # 3e-3 of the row, less what atol allows
    assert floors and max(floors) < 1e-5, "torch float32 is precise here: nothing to excuse the drift"


def torch_module():
    import torch

    return torch.nn.Module


@pytest.mark.slow
def test_interrupted_export_leaves_nothing(tiny_timm_folder, tmp_path: Path, monkeypatch) -> None:
    import exporters.onnx as onnx_exporter

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived after model.onnx was written

    monkeypatch.setattr(onnx_exporter, "write_golden_sets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tokenizer_settings_that_do_not_reproduce_are_caught(text_source, text_cls_artifact: Path) -> None:
    from zoo.tasks._text import tokenizer_file_check

    pp = json.loads((text_cls_artifact / "manifest.json").read_text())["preprocess"]
    assert tokenizer_file_check(text_cls_artifact, pp, text_source.cases).passed
    wrong = {**pp, "max_length": 64, "padding_side": "left"}
    check = tokenizer_file_check(text_cls_artifact, wrong, text_source.cases)
    assert not check.passed and "long" in check.detail


# ---------------------------------------------------------------- the comparison rules


def test_tolerance_scales_with_torch_not_onnx() -> None:
    """Wrong tolerance direction: rtol must multiply |torch| (the reference), never |onnx|."""
    from exporters.verify import within_tolerance

    tol = Tolerances(atol=0.0, rtol=0.6)
    torch_out, onnx_out = np.array([1.0]), np.array([2.0])
    # |d| = 1 <= 0.6 * |onnx| = 1.2 would pass; against |torch| it is 1 > 0.6
    assert not within_tolerance(torch_out, onnx_out, tol)
    assert within_tolerance(onnx_out, torch_out, tol)


def test_tolerance_boundary_and_huge_logits() -> None:
    from exporters.verify import within_tolerance

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    ref = np.array([[0.0], [100.0]], dtype=np.float32)  # two rows: each judged at its own scale
    assert within_tolerance(ref, ref + np.array([[0.5e-4], [0.09]], dtype=np.float32), tol)
    assert not within_tolerance(ref, ref + np.array([[2e-4], [0.0]], dtype=np.float32), tol)
    assert not within_tolerance(ref, ref + np.array([[0.0], [0.2]], dtype=np.float32), tol)
    # random-init models emit 1e10 logits: a difference of 22 is 2e-9 relative and must pass
    assert within_tolerance(np.array([1e10]), np.array([1e10 + 22]), tol)
    assert not within_tolerance(np.array([1.0]), np.array([np.nan]), tol)
    assert not within_tolerance(np.zeros((2, 3)), np.zeros((3, 2)), tol)


# A random-init dla102 row: huge logits beside small ones. Float32 noise on the small ones is of the
# row's scale (here 42, as the issue measured), far above their own magnitude.
HUGE_ROW = np.array([[3.2e9, -1.5e10, 2.0, -0.7, 1.0e3]])


def test_row_scale_accepts_float32_noise_the_elementwise_rule_refused() -> None:
    from exporters.verify import ALLCLOSE, within_tolerance

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    noisy = HUGE_ROW + np.array([[300.0, -42.0, 42.0, 13.0, -9.0]])
    assert within_tolerance(HUGE_ROW, noisy, tol)
    assert not within_tolerance(HUGE_ROW, noisy, tol, ALLCLOSE), "the old rule: the false failure of the issue"


def test_row_scale_catches_faults_of_the_row_scale() -> None:
    """The twins: what the row rule must still refuse."""
    from exporters.verify import within_tolerance

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    big_fault = HUGE_ROW * np.array([[1.0, 1.01, 1.0, 1.0, 1.0]])  # 1% on the largest logit
    assert not within_tolerance(HUGE_ROW, big_fault, tol)
    small_fault = HUGE_ROW + np.array([[0.0, 0.0, 2e7, 0.0, 0.0]])  # 0.13% of the row's scale on a small logit
    assert not within_tolerance(HUGE_ROW, small_fault, tol)
    # a row of ordinary logits keeps its own scale: every element may move 1e-4 + 1e-3 * 4 = 0.0041, no more
    ordinary = np.array([[4.0, -1.0, 0.5, 0.1]])
    assert not within_tolerance(ordinary, ordinary * np.array([[1.01, 1.0, 1.0, 1.0]]), tol)  # 1% of the top logit
    assert not within_tolerance(ordinary, ordinary + np.array([[0, 0, 0, 0.005]]), tol)  # 5% of the smallest
    assert within_tolerance(ordinary, ordinary + 0.004, tol)
    # rows do not lend each other scale: the huge row's noise on an ordinary row is a failure
    both = np.concatenate([HUGE_ROW[:, :4], ordinary])
    assert not within_tolerance(both, both + np.array([[0, 0, 0, 0], [0, 0, 42.0, 0]]), tol)


def test_row_scale_does_not_catch_faults_below_float32_resolution_of_the_row() -> None:
    """Stated precisely: a 1% fault of a small logit beside 1e10 ones is within the row's float32 noise."""
    from exporters.verify import within_tolerance

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    one_percent_of_small = HUGE_ROW * np.array([[1.0, 1.0, 1.01, 1.0, 1.0]])
    assert within_tolerance(HUGE_ROW, one_percent_of_small, tol)
    # accepted up to rtol * max|row| and not beyond: the bound is exact
    limit = 1e-4 + 1e-3 * 1.5e10
    assert within_tolerance(HUGE_ROW, HUGE_ROW + np.array([[0, 0, limit * 0.999, 0, 0]]), tol)
    assert not within_tolerance(HUGE_ROW, HUGE_ROW + np.array([[0, 0, limit * 1.001, 0, 0]]), tol)


def test_non_finite_values_must_match_exactly() -> None:
    from exporters.verify import within_tolerance

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    ref = np.array([[np.inf, 1.0, np.nan]])
    assert within_tolerance(ref, ref.copy(), tol)
    assert not within_tolerance(ref, np.array([[1e30, 1.0, np.nan]]), tol), "an infinity became finite"
    assert not within_tolerance(ref, np.array([[np.inf, 1.0, 0.0]]), tol), "a NaN became a number"
    assert not within_tolerance(np.array([[1.0, 2.0]]), np.array([[1.0, np.inf]]), tol)


def test_tolerance_record_round_trips_and_old_artifacts_keep_allclose() -> None:
    from exporters.verify import ALLCLOSE, ROW_SCALE, read_tolerances, tolerance_record
    from zoo.errors import ArtifactError

    tol = Tolerances(atol=1e-3, rtol=1e-2, cosine=0.999)
    record = tolerance_record(tol)
    assert record["rule"] == ROW_SCALE and "last axis" in record["scale"]
    assert read_tolerances(record) == (tol, ROW_SCALE)
    assert read_tolerances({"atol": 1e-3, "rtol": 1e-2, "cosine": 0.999}) == (tol, ALLCLOSE)
    with pytest.raises(ArtifactError, match="tolerances.rule 'loose'"):
        read_tolerances({**record, "rule": "loose"})


def test_output_stats_report_max_abs_and_rel() -> None:
    from exporters.verify import OutputStats

    stats = OutputStats("logits", Tolerances(atol=1e-4, rtol=1e-3))
    stats.add(np.array([[2.0, 4.0]]), np.array([[2.0, 4.4]]), "case a")
    check = stats.check()
    assert not check.passed and "max abs 0.4" in check.value and "max rel 0.1" in check.value
    assert "max rel to row 0.1" in check.value and check.limit == "|d| <= 0.0001 + 0.001*max|torch row|"
    assert "case a" in check.detail


def test_needed_rtol_is_the_exact_boundary() -> None:
    from exporters.verify import needed_rtol, within_tolerance

    ref = np.array([[4.0, -1.0, 0.5]])
    got = ref + np.array([[0.0, 0.01, -0.002]])
    need = needed_rtol(ref, got, atol=1e-4)
    assert need == pytest.approx((0.01 - 1e-4) / 4.0)
    assert within_tolerance(ref, got, Tolerances(atol=1e-4, rtol=need * 1.001))
    assert not within_tolerance(ref, got, Tolerances(atol=1e-4, rtol=need * 0.999))
    assert needed_rtol(ref, ref, atol=0.0) == 0.0
    assert needed_rtol(ref, np.array([[4.0, np.nan, 0.5]]), atol=1e-4) == np.inf, "no rtol excuses a NaN"
    assert needed_rtol(ref, ref[:, :2], atol=1e-4) == np.inf


def test_output_stats_widen_only_as_far_as_allowed() -> None:
    from exporters.verify import OutputStats

    stats = OutputStats("logits", Tolerances(atol=0.0, rtol=1e-3))
    ref = np.array([[4.0, -1.0]])
    stats.add(ref, ref + np.array([[0.0, 0.008]]), "a")  # needs 2e-3 of the row
    stats.add(ref, ref + np.array([[0.0, 0.08]]), "b")  # needs 2e-2
    assert not stats.widen("b", 1e-2) and stats.failed == ["a", "b"]
    assert stats.widen("a", 3e-3) and stats.failed == ["b"]
    assert not stats.widen("a", 1.0), "a case that already passed is not widened twice"
    check = stats.check()
    assert not check.passed and "(rtol 0.003 on 1 cases: float32 noise floor)" in check.limit


def _case(**inputs: np.ndarray):
    from zoo.tasks.base import Case

    return Case("unit", 0, inputs or {"x": np.zeros((1, 1))})


def test_top1_disagreement_fails_and_ties_are_excused() -> None:
    from zoo.tasks import get_task

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    ref = np.array([[1.0, 2.0, 0.0], [5.0, 1.0, 0.0]])
    flipped = get_task("text-classification").agreement(None, tol)
    flipped.add({"logits": ref}, {"logits": np.array([[2.5, 2.0, 0.0], [5.0, 1.0, 0.0]])}, _case())
    assert not flipped.check().passed and flipped.check().value == "50.00%"
    tie = get_task("image-classification").agreement(None, tol)
    tie.add({"logits": np.array([[3.0, 3.0 - 1e-6]])}, {"logits": np.array([[3.0 - 2e-6, 3.0]])}, _case())
    assert tie.check().passed and "1 ties within tolerance" in tie.check().detail


def test_token_classification_agreement_counts_only_real_tokens() -> None:
    from zoo.tasks import get_task

    task = get_task("token-classification")
    tol = Tolerances()
    ref = np.zeros((1, 3, 2))
    ref[..., 0] = 1.0
    got = ref.copy()
    got[0, 2] = [0.0, 1.0]  # the padding position disagrees: ignored
    case = _case(attention_mask=np.array([[1, 1, 0]]))
    stats = task.agreement(None, tol)
    stats.add({"logits": ref}, {"logits": got}, case)
    assert stats.check().passed and "2 tokens" in stats.check().detail
    got[0, 1] = [0.0, 1.0]  # a real token disagrees: caught
    stats = task.agreement(None, tol)
    stats.add({"logits": ref}, {"logits": got}, case)
    assert not stats.check().passed


def test_embedding_cosine_below_threshold_fails() -> None:
    from zoo.spec import ModelSpec, Preprocess
    from zoo.tasks import get_task

    spec = ModelSpec(name="t", source="hf", source_id="t", task="feature-extraction",
                     preprocess=Preprocess(pooling="mean"))
    task = get_task("feature-extraction")
    tol = Tolerances(cosine=0.9999)
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    good = task.agreement(spec, tol)
    good.add({"embeddings": ref}, {"embeddings": ref * 1.001}, _case())
    assert good.check().passed
    bad = task.agreement(spec, tol)
    bad.add({"embeddings": ref}, {"embeddings": np.array([[1.0, 0.02], [0.0, 1.0]])}, _case())
    assert not bad.check().passed and bad.check().value.startswith("min 0.9998")


@pytest.mark.slow
def test_against_source_fails_when_the_source_is_gone(tiny_timm_folder, tmp_path: Path) -> None:
    from exporters.onnx import export_onnx
    from exporters.verify import verify_artifact

    source = Path(shutil.copytree(tiny_timm_folder, tmp_path / "source"))
    artifact = export_onnx(str(source), out=tmp_path / "artifact").path
    assert verify_artifact(artifact).passed
    shutil.rmtree(source)
    assert verify_artifact(artifact).passed, "the artifact itself needs no source"
    with pytest.raises(VerificationError) as info:
        verify_artifact(artifact, against_source=True)
    assert "source model" in _failed(info)


def test_first_line_drops_terminal_colours() -> None:
    """torch.onnx colours 'step 2/3' for a terminal; a manifest's export_notes must not carry escape codes."""
    from zoo.errors import first_line

    exc = RuntimeError("Failed to decompose. \x1b[96mThis is step 2/3\x1b[0m of exporting.\nmore detail")
    assert first_line(exc) == "Failed to decompose. This is step 2/3 of exporting."


def test_shared_difference_agrees_with_the_rule_element_by_element() -> None:
    """The one-pass comparison (``Difference``) gives what the rule says, written out per element, on rows
    mixing ordinary values, huge ones, infinities and NaN on either side."""
    from exporters.verify import ALLCLOSE, ROW_SCALE, OutputStats, needed_rtol, within_tolerance

    rng = np.random.default_rng(0)
    tol = Tolerances(atol=1e-4, rtol=1e-3)
    specials = np.array([np.inf, -np.inf, np.nan, 1e10, 0.0])
    for trial in range(200):
        ref = rng.standard_normal((3, 5)).astype(np.float32)
        got = ref + rng.standard_normal(ref.shape).astype(np.float32) * rng.choice([1e-6, 1e-3, 1e-1])
        for array in (ref, got):
            where = rng.random(ref.shape) < 0.1
            array[where] = rng.choice(specials, size=int(where.sum()))
        if trial % 3 == 0:  # matched non-finite values must pass as exact
            got[~np.isfinite(ref)] = ref[~np.isfinite(ref)]
        for rule in (ROW_SCALE, ALLCLOSE):
            r, g = ref.astype(np.float64), got.astype(np.float64)
            magnitude = np.where(np.isfinite(r), np.abs(r), 0.0)
            scale = magnitude if rule == ALLCLOSE else np.broadcast_to(magnitude.max(-1, keepdims=True), r.shape)
            with np.errstate(invalid="ignore"):
                ok = (np.abs(g - r) <= tol.atol + tol.rtol * scale) | (r == g) | (np.isnan(r) & np.isnan(g))
                at_atol = (np.abs(g - r) <= tol.atol) | (r == g) | (np.isnan(r) & np.isnan(g))
            assert within_tolerance(ref, got, tol, rule) == bool(ok.all()), (trial, rule)
            needed = needed_rtol(ref, got, tol.atol, rule)
            assert (needed == 0.0) == bool(at_atol.all())
            if np.isfinite(needed) and needed > 0:  # the rtol it names is just enough, and a hair less is not
                assert within_tolerance(ref, got, Tolerances(tol.atol, needed * (1 + 1e-9)), rule)
                assert not within_tolerance(ref, got, Tolerances(tol.atol, needed * (1 - 1e-6)), rule)
            stats = OutputStats("y", tol, rule)
            stats.add(ref, got, "case")
            assert stats.check().passed == bool(ok.all())


def test_the_dynamic_axes_check_reads_a_graph_written_again(tmp_path: Path) -> None:
    """The check keeps what it read of a file; a graph written again at the same path is read again."""
    import onnx
    from onnx import TensorProto, helper

    from exporters.verify import dynamic_axes_check

    def write(batch: int | str) -> None:
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])])
        onnx.save(helper.make_model(graph), str(path))

    path = tmp_path / "model.onnx"
    declared = ([("x", ["batch", 4])], [("y", ["batch", 4])])
    write("batch")
    assert dynamic_axes_check(path, *declared).passed
    write(2)
    check = dynamic_axes_check(path, *declared)
    assert not check.passed and "x[0]=2 is fixed" in check.detail
