"""int4 of weights already on a GGUF block grid (Q4_1, Q8_0): recovered exactly and written to MatMulNBits
without a second rounding; a block off its grid is rounded instead, and a written block that does not give its
weights back is refused.

The tiny model is ``tiny.successor_lm`` with every Linear weight snapped to Q4_1's grid (the LM head to Q8_0's,
a GGUF's usual embedding type), as zoo.sources.gguf's dequantised folders are. Timing is never measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters import block_recovery, gates, generative_gate, quantize
from tests import tiny
from zoo.errors import VerificationError

pytestmark = pytest.mark.xdist_group("optimize")


def q4_1(rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A [K, N] weight made of random Q4_1 blocks along K, and its (d, m, q): d and m float16, q in 0..15 with
    0 and 15 in every block (llama.cpp's quantiser maps a block's min to 0 and its max to 15)."""
    d = rng.uniform(1e-3, 2e-2, (n, k // 32)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.2, 0.0, (n, k // 32)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (n, k // 32, 32))
    q[..., 0], q[..., 1] = 0, 15
    q = rng.permuted(q, axis=-1)
    w = d[..., None] * q.astype(np.float32) + m[..., None]  # float32 arithmetic, as a GGUF reader dequantises
    return np.ascontiguousarray(w.reshape(n, k).T), d, m, q


def snap(w: np.ndarray, symmetric: bool) -> np.ndarray:
    """[out, in] torch-layout weight moved onto Q4_1's grid (or Q8_0's) along ``in``, as llama.cpp quantises."""
    blocks = w.reshape(w.shape[0], -1, 32).astype(np.float32)
    if symmetric:
        d = (np.abs(blocks).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
        return (d * np.round(blocks / d)).reshape(w.shape)
    low = blocks.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
    d = ((blocks.max(-1, keepdims=True) - low) / 15).astype(np.float16).astype(np.float32)
    return (d * np.clip(np.round((blocks - low) / d), 0, 15) + low).reshape(w.shape)


# ---------------------------------------------------------------- recovering blocks


def test_q4_1_blocks_are_recovered_exactly():
    w, d, m, q = q4_1(np.random.default_rng(0), 96, 40)
    blocks = block_recovery.asymmetric4(w)
    assert blocks.exact.all() and blocks.exact_share == 1.0
    np.testing.assert_array_equal(blocks.scale, d)
    np.testing.assert_array_equal(blocks.offset, m)
    np.testing.assert_array_equal(blocks.codes, q)
    np.testing.assert_array_equal(blocks.dense(), w)  # bit for bit


def test_a_block_off_the_grid_falls_back_to_rounding_on_its_own_range():
    w, d, _, _ = q4_1(np.random.default_rng(1), 64, 8)
    w[40, 3] += d[3, 1] * 0.3  # row 40 is in block 1 of column 3: no longer on any 16-level grid
    blocks = block_recovery.asymmetric4(w)
    assert not blocks.exact[3, 1] and blocks.exact.sum() == blocks.exact.size - 1
    error = np.abs(blocks.dense() - w)[32:64, 3]
    assert 0 < error.max() <= blocks.scale[3, 1] / 2 + 1e-7  # rounded, to the nearest of 16 levels
    assert np.abs(blocks.dense() - w)[:, [0, 1, 2, 4, 5, 6, 7]].max() == 0


def test_q8_0_blocks_are_recovered_exactly_and_trained_weights_are_not_on_a_grid():
    rng = np.random.default_rng(2)
    w = snap(rng.standard_normal((16, 64)).astype(np.float32), symmetric=True).T
    blocks = block_recovery.symmetric8(w)
    assert blocks.exact.all() and blocks.zero == 128
    np.testing.assert_array_equal(blocks.dense(), w)
    trained = rng.standard_normal((64, 16)).astype(np.float32)
    assert block_recovery.asymmetric4(trained).exact_share == 0 and block_recovery.symmetric8(trained).exact_share == 0


def test_a_fused_matmul_lm_head_is_found_and_quantised_on_its_grid(tmp_path):
    """onnxscript fuses the head's x @ W^T into FusedMatMul(transB=1); it was once passed over, the last body
    MatMul taken for the head, and the real head left in fp32."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    table = snap(rng.standard_normal((256, 64)).astype(np.float32), symmetric=True)
    body = q4_1(rng, 64, 64)[0]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="body"),
             helper.make_node("FusedMatMul", ["h", "table"], ["logits"], name="head", domain="com.microsoft",
                              transB=1)]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 256])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(body, "w")])
    src, dst = tmp_path / "fused.onnx", tmp_path / "int4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("com.microsoft", 1)]), str(src))
    settings = quantize.weight_only(src, dst, "int4")
    assert settings["lm_head"] == {"node": "head", "bits": 8, "block_size": 32, "kept_fp32": False}
    assert settings["source_grid"]["matmuls"] == 2 and settings["source_grid"]["exact_blocks"] == 2 * 64 + 256 * 2
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("MatMulNBits") == 2 and "FusedMatMul" not in ops
    ids = np.arange(8, dtype=np.int64)
    expected, got = (ort.InferenceSession(str(p)).run(None, {"ids": ids})[0] for p in (src, dst))
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()  # int8 activations (accuracy_level 4)


# ---------------------------------------------------------------- a tiny LM on GGUF grids, through the gate


@pytest.fixture(scope="module")
def gguf_lm(tmp_path_factory) -> tuple[Path, str]:
    """(the exported successor LM with Q4_1 body weights and a Q8_0 head, a .txt of the text it predicts)."""
    import torch
    import transformers

    from exporters.onnx import export_onnx
    from zoo.resolver import resolve_folder

    root = tmp_path_factory.mktemp("gguf-lm")
    folder = tiny.successor_lm(root / "model")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        # the outlier channel exists to ruin a whole-row head scale (test_quantize_lm); on a GGUF grid it
        # would only coarsen its own block, and nothing here is about it
        model.lm_head.weight[:, 5] = model.lm_head.weight[:, 4]
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.from_numpy(snap(module.weight.numpy(), symmetric=name == "lm_head")))
    model.save_pretrained(folder)
    text = root / "held-out.txt"
    text.write_text(tiny.successor_text(folder))
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))
        return export_onnx(resolve_folder(folder), out=root / "artifact").path, str(text)


def _prefill(graph: Path, lm) -> dict[str, np.ndarray]:
    from zoo.artifact import read_manifest

    data = generative_gate.gate_data(lm[0], read_manifest(lm[0]), lm[1])
    return generative_gate.prefill_feed(gates.session(graph), data.windows[0])


@pytest.mark.parametrize("level", ["int4", "int8-weights"])
def test_a_model_on_gguf_grids_gives_the_fp32_logits_back(gguf_lm, tmp_path, monkeypatch, level):
    """With fp32 activations (accuracy_level 0) the weight-only graph computes the fp32 artifact's product: only
    float rounding apart. int8-weights too keeps a Q4_1 weight on its own grid: an 8-bit grid would round it."""
    monkeypatch.setattr(quantize, "ACCURACY_LEVEL", 0)
    parent = gguf_lm[0] / "model.onnx"
    settings = quantize.weight_only(parent, tmp_path / f"{level}.onnx", level)
    grid = settings["source_grid"]
    assert grid["matmuls"] == settings["matmuls_quantised"] == 9 and grid["exact_blocks"] == grid["blocks"]
    assert "9 MatMuls on their source's own grid" in settings["weights"]
    feed = _prefill(parent, gguf_lm)
    expected = gates.session(parent).run(["logits"], feed)[0]
    got = gates.session(tmp_path / f"{level}.onnx").run(["logits"], feed)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_int4_of_a_model_on_gguf_grids_passes_the_gate_at_no_loss(gguf_lm, tmp_path, monkeypatch):
    import zoo

    monkeypatch.setattr(generative_gate, "measure_decode",
                        lambda *args, **kwargs: [gates.SpeedFigure("decode, batch 1", 10.0, 5.0)])
    result = zoo.optimize(gguf_lm[0], out=tmp_path / "int4", level="int4", eval_data=gguf_lm[1])
    record = result.manifest.optimization
    figures = record["gates"]["generative"]
    assert figures["agreement"] == 1.0 and abs(figures["perplexity_increase_percent"]) < 0.1
    grid = record["recipe"]["quantization"]["source_grid"]
    assert grid["exact_blocks"] == grid["blocks"] and len(record["recipe"]["quantization"]["search"]) == 1


def test_a_zero_point_off_by_one_in_one_block_is_refused(gguf_lm, tmp_path, monkeypatch):
    """Q4_1's zero point is the block's minimum m; one step off (m + d) moves the block's 32 weights by d."""
    real = block_recovery.rewrite

    def off_by_one(model, weights, accuracy_level, **options):
        real(model, weights, accuracy_level, **options)
        from onnx import numpy_helper

        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.output[0].endswith(".codes"))
        init = {i.name: i for i in model.graph.initializer}
        minima, scales = init[node.output[0].removesuffix(".codes") + ".minima"], init[node.input[2]]
        planted = numpy_helper.to_array(minima).copy()  # [blocks, N]
        planted[1, 3] += numpy_helper.to_array(scales).reshape(planted.shape[1], -1)[3, 1]
        minima.CopyFrom(numpy_helper.from_array(planted, minima.name))

    monkeypatch.setattr(block_recovery, "rewrite", off_by_one)
    dst = tmp_path / "int4.onnx"
    with pytest.raises(VerificationError, match=r"block recovery: 1 blocks of .* do not give their weights back"):
        quantize.weight_only(gguf_lm[0] / "model.onnx", dst, "int4")
    assert not dst.exists()


def test_the_search_keeps_exact_weights_with_fp32_activations(gguf_lm, tmp_path):
    """A weight on its grid loses nothing; int8-rounded activations are what the search can give back."""
    import onnx

    parent = gguf_lm[0] / "model.onnx"
    ranked = quantize.rank_weight_error(parent, [_prefill(parent, gguf_lm)], "int4")
    assert len(ranked) == 8 and all(error > 0 for _, error in ranked)  # the activations' rounding alone
    keep = [name for name, _ in ranked[:3]]
    settings = quantize.weight_only(parent, tmp_path / "mixed.onnx", "int4", keep=keep)
    assert settings["kept"] == {"nodes": [], "bits": None, "fp32_activations": sorted(keep)}
    levels = {n.name: next(a.i for a in n.attribute if a.name == "accuracy_level")
              for n in onnx.load(str(tmp_path / "mixed.onnx")).graph.node if n.op_type == "MatMulNBits"}
    assert {n for n, level in levels.items() if level == 0} == set(keep) and len(levels) == 9


# ---------------------------------------------------------------- the search's error model


def _offset_heavy_graph(path: Path) -> np.ndarray:
    """x [16, 96] -> a Q4_1 body MatMul whose blocks sit far from zero (large minima) -> a head: the body's
    output is the graph's second output. Returns the input rows, a few channels 30x the others (the outliers
    that make int8-rounded activations lose)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    d = rng.uniform(5e-3, 1e-2, (48, 3)).astype(np.float16).astype(np.float32)
    m = rng.uniform(0.1, 0.3, (48, 3)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (48, 3, 32))
    q[..., 0], q[..., 1] = 0, 15  # the block's minimum is m: recovered exactly
    body = np.ascontiguousarray((d[..., None] * q.astype(np.float32) + m[..., None]).reshape(48, 96).T)
    head = rng.standard_normal((48, 10)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "body_w"], ["h"], name="body"),
             helper.make_node("MatMul", ["h", "head_w"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "offsets", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [16, 10]),
                               helper.make_tensor_value_info("h", TensorProto.FLOAT, [16, 48])],
                              [numpy_helper.from_array(body, "body_w"), numpy_helper.from_array(head, "head_w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = rng.standard_normal((16, 96)).astype(np.float32)
    x[:, [7, 40, 90]] *= 30
    return x


def _predicted(src: Path, x: np.ndarray) -> float:
    """The search's relative error for the body MatMul."""
    [(_, error)] = quantize.rank_weight_error(src, [{"x": x}], "int4")
    return error


def _measured(src: Path, dst: Path, x: np.ndarray) -> float:
    """The relative error the written int4 graph makes on the body's output."""
    quantize.weight_only(src, dst, "int4")
    exact, got = (gates.session(p).run(["h"], {"x": x})[0] for p in (src, dst))
    return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))


def test_the_search_predicts_the_error_of_the_written_graph(tmp_path):
    """A Q4_1 block's minimum is added in fp32: only the centred codes meet int8-rounded activations, and the
    search must rank by that error, not by the whole weight's."""
    x = _offset_heavy_graph(tmp_path / "offsets.onnx")
    predicted, measured = _predicted(tmp_path / "offsets.onnx", x), _measured(tmp_path / "offsets.onnx",
                                                                              tmp_path / "int4.onnx", x)
    assert measured > 0 and 0.9 < predicted / measured < 1.1


def test_an_error_model_that_forgets_the_fp32_minima_is_caught(tmp_path, monkeypatch):
    x = _offset_heavy_graph(tmp_path / "offsets.onnx")
    with monkeypatch.context() as patch:  # the search alone forgets them; the graph is written as ever
        patch.setattr(block_recovery, "offsets", lambda blocks: np.zeros_like(blocks.scale))
        predicted = _predicted(tmp_path / "offsets.onnx", x)
    measured = _measured(tmp_path / "offsets.onnx", tmp_path / "int4.onnx", x)
    assert predicted / measured > 3  # the check above would fail


def test_a_packed_projection_is_one_matmulnbits_with_one_minima_product(tmp_path, monkeypatch):
    """A decoder graph that packs q, k and v (or gate and up) into one MatMul over the concatenated weights
    keeps Q4_1's blocks (they run along K; the packing is along N): one MatMulNBits, one block-sum and one
    minima product, and the fp32 product back within float rounding (fp32 activations)."""
    import collections

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setattr(quantize, "ACCURACY_LEVEL", 0)
    rng = np.random.default_rng(5)
    packed = np.concatenate([q4_1(rng, 64, n)[0] for n in (64, 32, 32)], axis=1)
    head = snap(rng.standard_normal((100, 64)).astype(np.float32), symmetric=True).T
    nodes = [helper.make_node("MatMul", ["x", "qkv_w"], ["qkv"], name="qkv"),
             helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], name="split", axis=-1),
             helper.make_node("MatMul", ["q", "head_w"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                               for name in ("logits", "k", "v")],
                              [numpy_helper.from_array(packed, "qkv_w"), numpy_helper.from_array(head, "head_w"),
                               numpy_helper.from_array(np.array([64, 32, 32], np.int64), "sizes")])
    src, dst = tmp_path / "packed.onnx", tmp_path / "int4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    settings = quantize.weight_only(src, dst, "int4")
    assert settings["source_grid"]["exact_blocks"] == settings["source_grid"]["blocks"] == 128 * 2 + 100 * 2
    ops = collections.Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert ops["MatMulNBits"] == 2 and ops["MatMul"] == 2 and ops["Add"] == 1
    x = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    for expected, got in zip(*(gates.session(p).run(["logits", "k", "v"], x) for p in (src, dst))):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
