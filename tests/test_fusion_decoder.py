"""The decoder fusions of a text-generation export (exporters/fusion_decoder.py), on a tiny random Llama.

The export itself (fused graph kept, greedy tokens as transformers') is tested in
tests/test_text_generation.py on its module-wide exports; here: the rules on a plain graph,
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


def test_the_rules_fuse_a_llama_decoder_into_onnxruntime_operators(plain, tmp_path):
    import onnx
    import onnxruntime as ort

    from exporters.fusion_decoder import fuse_decoder

    _, path, _ = plain
    fused = tmp_path / "model.onnx"
    # 2 layers: each layer's query and key rotated, 4 norms after a residual add, one attention per layer
    assert fuse_decoder(path, fused, 64) == {"SkipSimplifiedLayerNormalization": 4, "RotaryEmbedding": 4,
                                             "GroupQueryAttention": 2}
    graph = onnx.load(str(fused)).graph
    # zoo's rule: the rotary ops index cos/sin tables by the graph's own position_ids
    rotary = [n for n in graph.node if n.op_type == "RotaryEmbedding"]
    assert all(n.domain == "com.microsoft" and n.input[1] == "position_ids" for n in rotary)
    tables = {i.name: i for i in graph.initializer}
    assert [d for d in tables[rotary[0].input[2]].dims] == [64, 4]  # max positions x head dim / 2
    # zoo's rule: attention reads the cache inputs as they are and writes the present outputs (no Concat, no
    # repeat_kv to all heads), so a caller can bind both to one buffer
    for i, node in enumerate(n for n in graph.node if n.op_type == "GroupQueryAttention"):
        assert list(node.input[3:5]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert list(node.output[1:]) == [f"present.{i}.key", f"present.{i}.value"]
    # and nothing else reads the cache but its batch size: a shared buffer is longer than its filled part
    readers = [n for n in graph.node if n.op_type != "GroupQueryAttention" and
               any(i.startswith("past_key_values.") for i in n.input)]
    assert [(n.op_type, {a.name: a.i for a in n.attribute}) for n in readers] == [("Shape", {"start": 0, "end": 1})]
    # the first layer's norm (no residual before it) stays plain ops: onnx.checker knows no ONNX-domain contrib op
    assert ("", "SimplifiedLayerNormalization") not in _ops(fused)
    onnx.checker.check_model(str(fused), full_check=True)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (path, fused)]
    for past, new in ((0, 5), (3, 4), (6, 1)):  # a prompt, a chunk on a cache, a decode step; left padding
        feed = _feed(sessions[0], past, new)
        if past and new > 1:  # onnxruntime's GroupQueryAttention runs a chunk on a cache for one row at a time
            feed = {name: value[1:] for name, value in feed.items()}
        for want, got in zip(*(s.run(None, feed) for s in sessions)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


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
    assert record["kept"] == "plain" and record["fused"]["RotaryEmbedding"] == 4
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
