"""The decoder fusions of a text-generation export (exporters/fusion_decoder.py), on a tiny random Llama.

The export itself (fused graph kept, greedy tokens as transformers') is tested in
tests/test_text_generation.py on its module-wide exports, whose heads of 8 keep the rotary
embedding outside the attention; here, on heads of 16 (what onnxruntime's kernel turns itself):
the rules on a plain graph, a fused graph with a planted fault failing the verification grid,
and the fused graph refused (the plain one kept, nothing left behind) when it is wrong.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from tests import tiny


@pytest.fixture(scope="module")
def plain(tmp_path_factory, registry):
    """The tiny Llama's source (one grid seed), its plain dynamo graph and torch's references."""
    from exporters.onnx import export_with
    from exporters.source import build_source
    from exporters.verify import torch_references

    root = tmp_path_factory.mktemp("fusion-llama")
    with pytest.MonkeyPatch.context() as patch:  # heads of 16: GroupQueryAttention applies the rotary itself
        patch.setitem(tiny.HF_TINY, "llama", dict(tiny.HF_TINY["llama"], head_dim=16))
        spec, _, _ = tiny.shrink(registry.get("smollm2-135m"), root / "model")
    source = build_source(spec, seeds=(0,))
    path = root / "plain" / "model.onnx"
    path.parent.mkdir()
    export_with("dynamo", source.module, source.spec, source.example, path)
    return source, path, torch_references(source.module, source.spec, source.cases)


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter((n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node)


def _feed(session, past: int, new: int) -> dict[str, np.ndarray]:
    """Two rows, the first left-padded by two columns, ``new`` tokens after a random cache of ``past`` (zero at
    padding, as the graph writes its own)."""
    rng = np.random.default_rng(0)
    mask = np.ones((2, past + new), np.int64)
    mask[0, :2] = 0
    positions = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)
    feed = {"input_ids": rng.integers(0, 100, (2, new)), "attention_mask": mask, "position_ids": positions[:, past:]}
    for item in session.get_inputs()[3:]:
        feed[item.name] = (rng.standard_normal((2, item.shape[1], past, item.shape[3])) *
                           mask[:, None, :past, None]).astype(np.float32)
    return feed


@pytest.fixture(scope="module")
def fused(plain, tmp_path_factory):
    from exporters.fusion_decoder import fuse_decoder

    path = tmp_path_factory.mktemp("fused-llama") / "model.onnx"
    return path, fuse_decoder(plain[1], path, 64)


def test_the_rules_fuse_a_llama_decoder_into_onnxruntime_operators(plain, fused):
    import onnx
    import onnxruntime as ort

    _, path, _ = plain
    fused, counts = fused
    # 2 layers: 4 norms after a residual add; each layer's q/k/v one MatMul into one attention that turns query
    # and key itself, its gate and up projections one MatMul + Split
    assert counts == {"SkipSimplifiedLayerNormalization": 4, "GroupQueryAttention": 2,
                      "packed QKV, rotary in GroupQueryAttention": 2, "packed MatMul + Split": 2}
    graph = onnx.load(str(fused)).graph
    ops = _ops(fused)
    assert ops[("", "MatMul")] == 2 * 4 + 1 and ops[("", "Split")] == 2  # qkv, o, gate+up, down; the LM head
    assert ("", "Transpose") not in ops and ("com.microsoft", "RotaryEmbedding") not in ops
    # nor a Reshape: the attention's output goes to the output projection as it is (see the test below)
    assert _attention_reshapes(graph) == 0
    assert [n.op_type for node in graph.node if node.op_type == "GroupQueryAttention" for n in graph.node
            if node.output[0] in n.input] == ["MatMul", "MatMul"]
    tables = {i.name: i for i in graph.initializer}
    for i, node in enumerate(n for n in graph.node if n.op_type == "GroupQueryAttention"):
        attributes = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        assert attributes == {"num_heads": 4, "kv_num_heads": 2, "do_rotary": 1, "rotary_interleaved": 0}
        assert node.input[1:3] == ["", ""]  # the packed form: query holds q, k and v
        # zoo's rule: cos/sin tables indexed by the graph's own position_ids, [max positions, head dim / 2]
        assert [list(tables[name].dims) for name in node.input[7:9]] == [[64, 8], [64, 8]]
        assert node.input[9] == "position_ids" and len(node.input) == 17 and node.input[16]  # query_seqlens
        # the cache inputs as they are, the present outputs written (no Concat, no repeat_kv), so a caller can
        # bind both to one buffer
        assert list(node.input[3:5]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert list(node.output[1:]) == [f"present.{i}.key", f"present.{i}.value"]
    # and nothing else reads the cache but its batch size: a shared buffer is longer than its filled part
    readers = [n for n in graph.node if n.op_type != "GroupQueryAttention" and
               any(i.startswith("past_key_values.") for i in n.input)]
    assert [(n.op_type, {a.name: a.i for a in n.attribute}) for n in readers] == [("Shape", {"start": 0, "end": 1})]
    # the first layer's norm (no residual before it) stays plain ops: onnx.checker knows no ONNX-domain contrib op
    assert ("", "SimplifiedLayerNormalization") not in ops
    onnx.checker.check_model(str(fused), full_check=True)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, fused)]
    # a prompt, a chunk on a cache (both rows at once: query_seqlens), a decode step; left padding
    for past, new in ((0, 5), (3, 4), (6, 1)):
        feed = _feed(sessions[0], past, new)
        for want, got in zip(*(s.run(None, feed) for s in sessions)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def _attention_reshapes(graph) -> int:
    """The Reshapes that read a GroupQueryAttention's output or feed one of its inputs."""
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    ins, outs = {i for n in attention for i in n.input if i}, {o for n in attention for o in n.output}
    return sum(1 for n in graph.node if n.op_type == "Reshape" and (set(n.input) & outs or set(n.output) & ins))


def test_reshapes_that_give_the_attention_output_its_own_shape_back_are_dropped_and_others_kept(fused):
    """The pass that drops them, on the fused graph with chains planted back after each attention: the pair
    onnxscript and the export write ([0, 0, heads, -1], then [0, 0, -1]: the output's own shape) goes; a chain to
    [1, -1, 64], which is the same only for one row, stays (and the count above would see it)."""
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes.common import ShapeInferencePass

    from exporters.fusion_decoder import attention_output_reshapes

    model = ir.load(str(fused[0]))
    attentions = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    for node, shapes in zip(attentions, ([[0, 0, 4, -1], [0, 0, -1]], [[0, 0, 4, -1], [1, -1, 64]])):
        readers, value = list(node.outputs[0].uses()), node.outputs[0]
        for i, shape in enumerate(shapes):
            target = ir.Value(name=f"{node.name}.shape{i}", const_value=ir.tensor(np.array(shape, np.int64)))
            model.graph.register_initializer(target)
            reshape = ir.node("Reshape", [value, target])
            model.graph.append(reshape)
            value = reshape.outputs[0]
        for reader, index in readers:
            reader.replace_input_with(index, value)
    model.graph.sort()
    ShapeInferencePass()(model)
    assert _attention_reshapes(ir.serde.serialize_model(model).graph) == 2
    assert attention_output_reshapes(model) == 1
    graph = ir.serde.serialize_model(model).graph
    assert _attention_reshapes(graph) == 1
    second = next(n for n in graph.node if n.op_type == "Reshape" and attentions[1].outputs[0].name in n.input)
    assert second.input[1] == f"{attentions[1].name}.shape0"
    onnx.checker.check_model(ir.serde.serialize_model(model))


def _swap_key_value(qkv: np.ndarray) -> np.ndarray:
    """The packed weight with its key and value columns trading places."""
    q = qkv.shape[-1] - 2 * 2 * 16  # 2 KV heads of 16
    return np.concatenate([qkv[..., :q], qkv[..., q + 32:], qkv[..., q:q + 32]], axis=-1)


def _plant(node, graph, fault: str) -> None:
    from onnx import numpy_helper

    tables = {i.name: i for i in graph.initializer}
    if fault == "key and value weights swapped":
        producer = {o: n for n in graph.node for o in n.output}
        matmul = producer[producer[node.input[0]].input[0]]  # Mul(the new columns' mask) of MatMul(x, W)
        weight = tables[matmul.input[1]]
        weight.CopyFrom(numpy_helper.from_array(_swap_key_value(numpy_helper.to_array(weight)), weight.name))
    elif fault == "rotary interleaved":
        next(a for a in node.attribute if a.name == "rotary_interleaved").i = 1
    elif fault == "no query_seqlens":  # the kernel's own first-prompt positions, which left padding moves
        del node.input[16:]


@pytest.mark.parametrize("fault", ["key and value weights swapped", "rotary interleaved", "no query_seqlens"])
def test_a_planted_fault_in_the_packed_attention_fails_the_verification_grid(plain, fused, fault, tmp_path):
    """Twins of the packing rules: each fault, planted in the fused graph's every attention, makes the grid's
    torch comparison fail (the export then keeps the plain graph, see the refusal tests below); the graph as
    fused matches the plain graph on left-padded prompts, chunks and decode steps (the test above)."""
    import onnx

    from exporters.verify import ROW_SCALE, run_grid

    source, _, references = plain
    model = onnx.load(str(fused[0]))
    for node in [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]:
        _plant(node, model.graph, fault)
    planted = tmp_path / "model.onnx"
    onnx.save(model, str(planted))
    bad = run_grid(source.spec, planted, source.cases, references, source.spec.verify, ROW_SCALE)
    failed = {c.name for c in bad.checks if not c.passed}
    assert "output present.0.key" in failed, failed  # the cache the fault writes wrong
    if fault != "no query_seqlens":  # a first prompt's positions move all alike: attention itself is unchanged
        assert "output logits" in failed, failed


def _choice(report):
    from exporters.onnx import GraphChoice

    return GraphChoice("dynamo", "all", report, [], {"form": "plain", "reason": "a decoder: its own recipe"})


def _stage(plain, tmp_path: Path) -> Path:
    path = tmp_path / "stage" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(plain[1].read_bytes())
    return path


def test_a_fused_graph_with_the_wrong_rotary_base_is_refused_and_the_plain_graph_kept(plain, tmp_path,
                                                                                     monkeypatch):
    """Planted fault: the rotary tables from a wrong base. The fused graph's verification refuses it, the plain
    graph stays at model.onnx, the manifest record and export notes say why, and nothing of it is left."""
    import exporters.fusion_decoder as fusion
    from zoo.checks import VerifyReport

    real = fusion.rotary_tables
    monkeypatch.setattr(fusion, "rotary_tables", lambda inv_freq, n: real(inv_freq ** 0.9, n))
    source, _, references = plain
    path = _stage(plain, tmp_path)
    before = path.read_bytes()
    preprocess = {"generation": {}}
    kept = fusion.fuse_verified(source, path, _choice(VerifyReport("tiny-llama")), references, preprocess,
                                lambda _msg: None)
    record = preprocess["generation"]["fusion"]
    assert record["kept"] == "plain" and record["fused"]["packed QKV, rotary in GroupQueryAttention"] == 2
    assert record["reason"].startswith("the fused graph failed verification: ")
    # the grid's output check sees it first: a wrong rotary base moves the cached keys and, through them, the logits
    assert "output present.0.key" in record["reason"] and "output logits" in record["reason"]
    assert kept.notes == [f"decoder fusion refused, the plain graph kept: {record['reason']}"]
    assert kept.graph == {"form": "plain", "reason": record["reason"]}  # the manifest's `graph` says so too
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    json.dumps(record)  # what the manifest holds


def test_a_fusion_that_fails_leaves_the_plain_graph_and_says_why(plain, tmp_path, monkeypatch):
    import exporters.fusion_decoder as fusion
    from zoo.checks import VerifyReport

    def broken(src, dst, max_positions):
        Path(dst).write_bytes(b"half a graph")
        raise ValueError("no such pattern\nsecond line")

    monkeypatch.setattr(fusion, "fuse_decoder", broken)
    source, _, references = plain
    path = _stage(plain, tmp_path)
    preprocess = {"generation": {}}
    report = VerifyReport("tiny-llama")
    kept = fusion.fuse_verified(source, path, _choice(report), references, preprocess, lambda _msg: None)
    assert kept.report is report
    assert preprocess["generation"]["fusion"] == {"fused": {}, "kept": "plain",
                                                  "reason": "fusion failed: ValueError: no such pattern"}
    assert kept.notes == ["decoder fusion refused, the plain graph kept: fusion failed: ValueError: no such pattern"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
