"""The fast decode path of text generation: GroupQueryAttention in the fused decoder, KV buffers shared in place.

One tiny random Llama (grouped-query attention: 4 heads, 2 KV heads, tests/tiny.py) exported once for
the module (one grid seed). The runtime's in-place path must give the tokens of the concatenating
loop it replaced, and a graph that writes the cache at the wrong offset must fail verification.
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
    spec, _, _ = tiny.shrink(registry.get("smollm2-135m"), root / "model")
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))
        return spec, export_onnx(spec, out=root / "artifact")


def test_shared_kv_buffers_generate_the_tokens_of_the_concatenating_loop(llama, monkeypatch):
    """In place (past and present bound to one preallocated buffer, a long batch row by row) and the old loop
    (each step's present fed back as the next past) choose the same tokens, chunked prefill and padding included."""
    import onnxruntime

    import zoo
    from zoo.runtime import generate

    _, result = llama
    assert result.manifest.graph["fusions"]["GroupQueryAttention"] == 2
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
            assert shared.count("present.0.key") >= 8 + 2  # every step of both runs wrote the shared buffer
            shared.clear()
    assert not shared  # the old loop bound fresh outputs
    assert runs[True] == runs[False] and all(len(t) == 8 for t in runs[True][0])


def _plant_wrong_offset(src, dst) -> None:
    """The fused graph with every row's length one short: GroupQueryAttention writes the new key and value one
    column early (over the last past entry) and attends to one key fewer."""
    model = onnx.load(str(src))
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    lengths = attention[0].input[5]
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int32), "planted_one"))
    model.graph.node.insert(list(model.graph.node).index(attention[0]),
                            onnx.helper.make_node("Sub", [lengths, "planted_one"], ["planted_lengths"]))
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
