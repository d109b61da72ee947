"""``zoo export`` ships the fused graph by default, verified like any export (issue 26).

    .venv/bin/pytest tests/test_fusion_default.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters import fusion
from exporters.golden import golden_sets, read_golden
from exporters.onnx import export_onnx
from zoo.artifact import MODEL_FILE, check_artifact, read_manifest
from zoo.errors import ConfigError

# onnxruntime's contrib ops that only the fusion writes (the plain dynamo graph has none)
FUSED_OPS = {"MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "Attention", "FastGelu"}


def _fused_ops(folder: Path) -> dict[str, int]:
    return {op: n for op, n in fusion.op_counts(folder / MODEL_FILE).items() if op in FUSED_OPS}


def _loaded_ops(path: Path) -> dict[str, int]:
    """The op counts of ``path`` as onnxruntime runs it: after its own fusions at level 'all'."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(work) / "loaded.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return fusion.op_counts(options.optimized_model_filepath)


def _replays_golden_data(folder: Path) -> None:
    """Every golden set (torch's outputs, written at export) through the artifact's graph, within its tolerances."""
    import onnxruntime as ort

    tolerances = read_manifest(folder).tolerances
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    for data_set in golden_sets(folder):
        inputs, expected = read_golden(data_set)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        for name, want in expected.items():
            # row-scale rule: |d| <= atol + rtol * max|torch row|
            scale = np.abs(want).reshape(want.shape[0], -1).max(axis=1).reshape(-1, *[1] * (want.ndim - 1))
            limit = tolerances["atol"] + tolerances["rtol"] * scale
            assert np.all(np.abs(got[name] - want) <= limit), f"{data_set.name} {name}"


def test_default_export_is_fused_and_exact(text_cls_artifact: Path) -> None:
    manifest = read_manifest(text_cls_artifact)
    assert manifest.verified and manifest.graph is not None
    assert manifest.graph["form"] == "fused" and manifest.graph["recipe"] == "encoder"
    fusions = manifest.graph["fusions"]
    assert fusions["MultiHeadAttention"] > 0 and fusions["BiasGelu"] > 0 and fusions["LayerNormalization on rows"] > 0
    ops = _fused_ops(text_cls_artifact)
    assert ops.get("MultiHeadAttention", 0) > 0 and ops.get("BiasGelu", 0) > 0, ops
    assert "SkipLayerNormalization" not in _loaded_ops(text_cls_artifact / MODEL_FILE)
    _replays_golden_data(text_cls_artifact)


def test_no_fuse_keeps_the_plain_graph(tiny_text_classifier: Path, tmp_path: Path, capsys: Any) -> None:
    from zoo.cli import main

    dest = tmp_path / "plain"
    with pytest.raises(SystemExit) as info:
        main(["export", str(tiny_text_classifier), "--out", str(dest), "--no-fuse", "--json"])
    assert info.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["passed"] is True
    manifest = read_manifest(dest)
    assert manifest.graph == {"form": "plain", "reason": "--no-fuse"}
    assert _fused_ops(dest) == {}
    _replays_golden_data(dest)


def _perturbing_recipe(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The real encoder fusion, then the classifier's weight scaled by 1%: a fusion that is not exact."""
    import onnx
    from onnx import numpy_helper

    real = fusion.RECIPES["encoder"]
    touched: list[str] = []

    def perturbing(src: Path | str, dst: Path | str) -> dict[str, int]:
        counts = real(src, dst)
        model = onnx.load(str(dst))
        weights = {t.name: t for t in model.graph.initializer}
        # the last projection with a constant weight: the head, whose error no LayerNorm rescales
        head = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights][-1]
        weight = weights[head.input[1]]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01), weight.name))
        onnx.save(model, str(dst))
        touched.append(weight.name)
        return counts

    monkeypatch.setitem(fusion.RECIPES, "encoder", perturbing)
    return touched


def _saved_graphs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Where ``zoo export`` writes a plain graph it held in memory."""
    import exporters.onnx as onnx_exporter

    saved: list[Path] = []
    real = onnx_exporter.save_graph

    def spy(model: Any, path: Path) -> None:
        saved.append(path)
        real(model, path)

    monkeypatch.setattr(onnx_exporter, "save_graph", spy)
    return saved


def test_the_plain_graph_goes_to_the_fusion_in_memory_and_is_never_written(
        tiny_text_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx_ir as ir

    saved = _saved_graphs(monkeypatch)
    real = fusion.RECIPES["encoder"]
    handed: list[Any] = []

    def recording(src: Any, dst: Path | str) -> dict[str, int]:
        handed.append(src)
        return real(src, dst)

    monkeypatch.setitem(fusion.RECIPES, "encoder", recording)
    result = export_onnx(str(tiny_text_classifier), out=tmp_path / "art")
    assert result.manifest.graph is not None and result.manifest.graph["form"] == "fused"
    assert len(handed) == 1 and isinstance(handed[0], ir.Model)
    assert saved == []


def test_may_fuse_tells_a_cnn_from_a_transformer() -> None:
    import onnx_ir as ir
    from onnx import TensorProto, helper

    def graph(*ops: str) -> Any:
        nodes = [helper.make_node(op, [f"v{i}"], [f"v{i + 1}"]) for i, op in enumerate(ops)]
        made = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 4])],
                                 [helper.make_tensor_value_info(f"v{len(ops)}", TensorProto.FLOAT, [1, 4])])
        return ir.serde.deserialize_model(helper.make_model(made, opset_imports=[helper.make_opsetid("", 18)]))

    assert not fusion.may_fuse(graph("Relu", "Relu", "Identity"))
    assert fusion.may_fuse(graph("Relu", "Softmax"))
    assert fusion.may_fuse(graph("Erf"))


def test_a_fusion_that_perturbs_a_weight_is_refused_and_the_plain_graph_ships(
        tiny_text_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched = _perturbing_recipe(monkeypatch)
    saved = _saved_graphs(monkeypatch)
    result = export_onnx(str(tiny_text_classifier), out=tmp_path / "art")
    assert touched, "the planted fusion never ran"
    assert [p.name for p in saved] == [MODEL_FILE], "the plain graph, held in memory, is written once it is needed"
    graph = result.manifest.graph
    assert graph is not None and graph["form"] == "plain"
    assert graph["reason"].startswith("the fused graph failed verification (output logits")
    notes = " | ".join(result.manifest.export_notes)
    assert "fused dynamo graph at onnxruntime optimisation 'all' failed: output logits" in notes
    assert notes.endswith("kept the dynamo graph, verified at onnxruntime optimisation 'all'")
    assert _fused_ops(result.path) == {}
    # nothing of the refused fusion is left in the artifact: every file is one the manifest hashes
    check_artifact(result.path, result.manifest, strict=True)
    assert sorted(p.name for p in result.path.iterdir() if p.name.startswith(".")) == []
    _replays_golden_data(result.path)


def test_when_neither_graph_passes_nothing_is_written(tiny_text_classifier: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Tolerances no float32 graph can meet: the fused and the plain graph are both refused, --out stays empty."""
    from zoo.errors import VerificationError

    dest = tmp_path / "art"
    with pytest.raises(VerificationError) as info:
        export_onnx(str(tiny_text_classifier), out=dest, atol=0.0, rtol=0.0)
    message = str(info.value)
    assert "the fused graph failed verification" in message and "dynamo graph at onnxruntime" in message
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_fusion_that_raises_leaves_the_plain_graph(tiny_timm_folder: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src: Any, dst: Path | str) -> dict[str, int]:
        Path(dst).write_bytes(b"half a graph")
        if not isinstance(src, (str, Path)):  # a graph in memory, wrecked halfway: the plain one must not be
            src.graph.outputs.clear()
        raise RuntimeError("planted rewriter failure")

    monkeypatch.setitem(fusion.RECIPES, "encoder", broken)
    result = export_onnx(str(tiny_timm_folder), out=tmp_path / "art")
    assert result.manifest.graph == {"form": "plain", "reason": "the encoder fusion failed: RuntimeError: planted "
                                                                "rewriter failure"}
    assert "planted rewriter failure" in result.manifest.export_notes[0]
    assert result.exporter == "dynamo" and result.report.passed, result.manifest.export_notes
    check_artifact(result.path, result.manifest, strict=True)


def test_a_graph_without_a_matching_pattern_stays_plain(timm_artifact: Path) -> None:
    """A CNN has no attention or LayerNorm to fuse (onnxruntime fuses its Conv+BN+ReLU at load)."""
    graph = read_manifest(timm_artifact).graph
    assert graph == {"form": "plain", "reason": "no encoder fusion pattern matched this graph"}


def test_text_generation_has_no_encoder_recipe(registry: Any) -> None:
    """The decoder graph (KV cache) opts in with a recipe of its own; until then export leaves it plain."""
    from zoo.tasks import get_task

    assert get_task("text-generation").graph_fusion(registry.get("smollm2-135m")) is None
    assert get_task("text-classification").graph_fusion(registry.get("bert-base")) == "encoder"


def test_optimize_level_fused_on_a_fused_artifact_is_refused(text_cls_artifact: Path, tmp_path: Path) -> None:
    from exporters.optimize import optimize

    dest = tmp_path / "again"
    with pytest.raises(ConfigError) as info:
        optimize(text_cls_artifact, out=dest, level="fused")
    assert "fused and verified at export" in str(info.value) and "MultiHeadAttention" in str(info.value)
    assert not dest.exists()


def test_optimize_auto_on_a_fused_artifact_leaves_out_the_fused_level() -> None:
    from exporters.optimize import _levels
    from zoo.tasks import get_task

    task = get_task("text-classification")
    fused, plain = _levels("auto", task, fused_at_export=True), _levels("auto", task, fused_at_export=False)
    # the int8 search comes last: the levels before it (OpenVINO's, bf16 where the CPU computes it) are its rivals
    assert fused[-1] == plain[-1] == "int8" and "fused" not in fused and "fused" in plain
    assert [lv for lv in plain if lv != "fused"] == fused  # the OpenVINO levels, where installed, stay


def _sum_then_layer_norm(path: Path, *, through_add: bool = True) -> None:
    """A 3-D residual sum normalised over its last axis: what onnxruntime fuses into SkipLayerNormalization."""
    import onnx
    from onnx import TensorProto, helper

    dim = 8
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", dim]) for n in ("x", "skip")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", dim])
    weights = [onnx.numpy_helper.from_array(np.linspace(0.5, 1.5, dim, dtype=np.float32), "scale"),
               onnx.numpy_helper.from_array(np.linspace(-0.1, 0.1, dim, dtype=np.float32), "bias")]
    first = helper.make_node("Add" if through_add else "Mul", ["x", "skip"], ["sum"])
    norm = helper.make_node("LayerNormalization", ["sum", "scale", "bias"], ["y"], axis=-1, epsilon=1e-6)
    graph = helper.make_graph([first, norm], "g", inputs, [output], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _run(path: Path, feed: dict[str, np.ndarray], level: str = "all") -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _apply_rows_rule(src: Path, dst: Path) -> int:
    import onnx_ir as ir

    import onnx_ir.passes.common as common_passes

    model = ir.load(str(src))
    common_passes.ShapeInferencePass()(model)  # as fuse_graph does: the rule needs the sum's shape
    count = fusion.layer_norm_on_rows(model)
    ir.save(model, str(dst))
    return count


def test_layer_norm_of_a_sum_is_kept_from_onnxruntimes_skip_layer_norm(tmp_path: Path) -> None:
    """The rule's pattern: exact, and onnxruntime no longer makes its slow SkipLayerNormalization at load."""
    plain, guarded = tmp_path / "plain.onnx", tmp_path / "guarded.onnx"
    _sum_then_layer_norm(plain)
    assert _loaded_ops(plain).get("SkipLayerNormalization") == 1  # what the rule is there to prevent
    assert _apply_rows_rule(plain, guarded) == 1
    assert _loaded_ops(guarded).get("SkipLayerNormalization") is None
    assert fusion.op_counts(guarded) == {"Add": 1, "Constant": 1, "LayerNormalization": 1, "Reshape": 1}
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (3, 5)):
        feed = {n: rng.standard_normal((*shape, 8)).astype(np.float32) for n in ("x", "skip")}
        # the same Add and LayerNormalization kernels as the unfused graph: equal to the bit
        np.testing.assert_array_equal(_run(guarded, feed), _run(plain, feed, level="basic"))


def test_layer_norm_of_anything_but_a_sum_is_left_alone(tmp_path: Path) -> None:
    plain = tmp_path / "plain.onnx"
    _sum_then_layer_norm(plain, through_add=False)
    assert _apply_rows_rule(plain, tmp_path / "same.onnx") == 0


def test_export_optimize_fused_is_refused_before_the_export(tiny_text_classifier: Path, tmp_path: Path,
                                                            capsys: Any) -> None:
    """The default graph is the fused level already: one line, before anything is built or written."""
    from zoo.cli import main

    dest = tmp_path / "art"
    with pytest.raises(SystemExit) as info:
        main(["export", str(tiny_text_classifier), "--out", str(dest), "--optimize", "fused"])
    err = capsys.readouterr().err
    assert info.value.code != 0 and "writes the fused graph by default already" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
