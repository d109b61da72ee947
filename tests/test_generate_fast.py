"""The fast decode path of text generation: GroupQueryAttention in the fused decoder, KV buffers shared in place.

One tiny random Llama (grouped-query attention: 4 heads, 2 KV heads, tests/tiny.py) with heads of 16, so the
export packs q/k/v into GroupQueryAttention with the rotary inside (SmolLM2's graph; tests/test_text_generation.py
has the heads of 8 that keep it outside), exported once for the module (one grid seed). The runtime's in-place
path must give the tokens of the concatenating loop it replaced, a batch prefilled in one call those of its rows
one by one, and a graph that writes the cache at the wrong offset must fail verification.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests import tiny

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived", "Hi"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, registry):
    from exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("fast-llama")
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setitem(tiny.HF_TINY, "llama", dict(tiny.HF_TINY["llama"], head_dim=16))
        spec, _, _ = tiny.shrink(registry.get("smollm2-135m"), root / "model")
        patch.setattr(exporters.source, "SEEDS", (0,))
        return spec, export_onnx(spec, out=root / "artifact")


def test_shared_kv_buffers_generate_the_tokens_of_the_concatenating_loop(llama, monkeypatch):
    """In place (past and present bound to one preallocated buffer) and the old loop (each step's present fed back
    as the next past) choose the same tokens, chunked prefill and padding included."""
    import onnxruntime

    import zoo
    from zoo.runtime import generate

    _, result = llama
    assert result.manifest.graph["fusions"] == {"SkipSimplifiedLayerNormalization": 4, "GroupQueryAttention": 2,
                                                "packed QKV, rotary in GroupQueryAttention": 2,
                                                "packed MatMul + Split": 2}
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 4)
    shared: list[str] = []
    original = onnxruntime.IOBinding.bind_ortvalue_output
    monkeypatch.setattr(onnxruntime.IOBinding, "bind_ortvalue_output",
                        lambda self, name, value: (shared.append(name), original(self, name, value))[1])
    from zoo.runtime import engines

    trims: list[int] = []
    real_trim = engines.release_freed_memory
    monkeypatch.setattr(engines, "release_freed_memory", lambda: (trims.append(1), real_trim())[1])
    model = zoo.load(result.path)
    assert trims == [1]  # the parsed model's freed pages go back to the system once the session is built
    runs = {}
    for in_place in (True, False):
        generator = model.generator()
        assert generator.shared  # a fused CPU artifact appends in place by default
        generator.shared = in_place
        runs[in_place] = [[list(r.token_ids) for r in generator.generate(prompts, max_new_tokens=8)]
                          for prompts in (PROMPTS, PROMPTS[1:2])]
        if in_place:
            # the prefill calls bind the shared buffer each; the 7 decode steps of each run write it bound once
            prefills = 1 - (-len(generator._encode(PROMPTS[1:2], True)[0][0]) // 4)  # all rows at once; chunks of 4
            assert shared.count("present.0.key") == prefills + 2, shared.count("present.0.key")
            shared.clear()
    assert not shared  # the old loop bound fresh outputs
    assert runs[True] == runs[False] and all(len(t) == 8 for t in runs[True][0])


def _prefills(model, batch: int) -> tuple[list[list[int]], list[np.ndarray], list[tuple[int, int]]]:
    """(every row's tokens, every step's logits, the [rows, columns] of every prefill call) of PROMPTS, 8 greedy
    tokens, each prompt longer than a prefill chunk, with ``batch`` positions a prefill call may hold."""
    from zoo.runtime import generate
    from zoo.tasks._decoding import Sampling

    logits: list[np.ndarray] = []
    calls: list[tuple[int, int]] = []
    choose, step = Sampling.choose, generate.Generator._step
    with pytest.MonkeyPatch.context() as patch:  # undone after the run: the next one wraps the methods afresh
        patch.setattr(generate, "PREFILL_CHUNK", 4)
        patch.setattr(generate, "PREFILL_BATCH", batch)
        patch.setattr(Sampling, "choose", lambda self, scores, *a: (logits.append(scores.copy()),
                                                                    choose(self, scores, *a))[1])
        patch.setattr(generate.Generator, "_step", lambda self, binding, ids, *a: (
            calls.append(ids.shape) if ids.shape[1] > 1 else None, step(self, binding, ids, *a))[1])
        tokens = [list(r.token_ids) for r in model.generator().generate(PROMPTS, max_new_tokens=8)]
    return tokens, logits, calls


def _same_generation(one_call, row_by_row) -> None:
    assert one_call[0] == row_by_row[0]
    assert len(one_call[1]) == len(row_by_row[1]) == 8
    for batched, alone in zip(one_call[1], row_by_row[1]):
        np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)


def test_a_batch_prefilled_in_one_call_generates_as_its_rows_one_by_one(llama):
    """Prompts of different lengths (left padding), each wider than a chunk: the whole batch in one call from the
    empty shared buffers gives every step's logits and the greedy tokens of its rows prefilled one at a time in
    chunks (what a row wider than PREFILL_BATCH allows still takes)."""
    import zoo

    model = zoo.load(llama[1].path)
    one_call = _prefills(model, 1024)
    row_by_row = _prefills(model, 1)
    width = max(len(p) for p in model.generator()._encode(PROMPTS, True)[0])
    assert one_call[2] == [(len(PROMPTS), width)] and width > 4
    assert len(row_by_row[2]) > len(PROMPTS) and {rows for rows, _ in row_by_row[2]} == {1}
    _same_generation(one_call, row_by_row)
    groups = _prefills(model, 2 * width)  # two rows a call, then the last alone
    assert groups[2] == [(2, width), (1, width)]
    _same_generation(groups, row_by_row)


def test_a_wrong_length_for_the_padded_row_in_the_batched_prefill_is_caught(llama, monkeypatch):
    """The planted twin: the one-call prefill given the padded rows' lengths as the full width (their padding
    taken for tokens) no longer generates as the rows one by one."""
    import zoo
    from zoo.runtime import generate

    model = zoo.load(llama[1].path)
    row_by_row = _prefills(model, 1)
    step = generate.Generator._step
    monkeypatch.setattr(generate.Generator, "_step", lambda self, binding, ids, mask, past: step(
        self, binding, ids, np.ones_like(mask) if ids.shape[0] > 1 and ids.shape[1] > 1 else mask, past))
    planted = _prefills(model, 1024)
    assert planted[2] == [(len(PROMPTS), planted[2][0][1])]
    with pytest.raises(AssertionError):
        _same_generation(planted, row_by_row)


def _plant_wrong_offset(src, dst) -> None:
    """The fused graph with every row's length one short on a cache: GroupQueryAttention writes the new key and
    value one column early (over the last past entry) and attends to one key fewer. A first prompt keeps its
    length (the kernel refuses one shorter than the new tokens): max(length - 1, new tokens - 1)."""
    model = onnx.load(str(src))
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    lengths, new = attention[0].input[5], attention[0].input[16]  # seqlens_k, query_seqlens
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int32), "planted_one"))
    planted = [onnx.helper.make_node("Sub", [lengths, "planted_one"], ["planted_short"]),
               onnx.helper.make_node("Sub", [new, "planted_one"], ["planted_prompt"]),
               onnx.helper.make_node("Max", ["planted_short", "planted_prompt"], ["planted_lengths"])]
    at = list(model.graph.node).index(attention[0])
    for node in reversed(planted):
        model.graph.node.insert(at, node)
    for node in attention:
        node.input[5] = "planted_lengths"
    onnx.save(model, str(dst))


def test_a_cache_written_at_the_wrong_offset_fails_verification(llama, tmp_path):
    """The planted twin of the export's step checks on a GroupQueryAttention graph: prefill alone still matches
    (an empty cache), the decode steps on a cache do not."""
    from exporters.source import build_source
    from exporters.verify import torch_references, verify_model

    spec, result = llama
    planted = tmp_path / "model.onnx"
    _plant_wrong_offset(result.path / "model.onnx", planted)
    source = build_source(spec, seeds=(0,))
    references = torch_references(source.module, source.spec, source.cases)
    report, _ = verify_model(source.module, source.spec, planted, source.cases, references=references)
    assert not report.passed
    assert any("decode" in f"{c.name} {c.value} {c.detail}" for c in report.failures), report.failures
