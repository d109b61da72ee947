"""zoo optimize --level int8-weights|int4 for text generation: MatMulNBits graphs behind the generative gate,
each check with a twin that plants the fault it must catch.

The model is ``tiny.successor_lm``: a tiny Llama whose greedy next token is decisive (a random one's are near
ties that any quantisation flips), with an outlier channel in its LM head that is exact in fp32 and ruins a
head quantised with one scale per whole row. The gate judges perplexity on the text the model predicts
(``--eval-data``) and greedy continuations of its built-in prompts. Timing is never measured: the decode speed
is replaced by fixed figures.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from exporters import gates, generative_gate, quantize
from tests import tiny
from zoo.errors import ConfigError, DataError, GateError

pytestmark = pytest.mark.xdist_group("optimize")
REAL_MEASURE_DECODE = generative_gate.measure_decode  # kept before the autouse fixture replaces it


def fake_decode(factor: float):
    """measure_decode's stand-in: the quantised graph's step takes 1/factor of the parent's 10 ms."""
    def measure(parent, candidate, folder, manifest, prompt=None):
        return [gates.SpeedFigure("decode, batch 1", 10.0, 10.0 / factor)]

    return measure


@pytest.fixture(autouse=True)
def twice_as_fast(monkeypatch):
    monkeypatch.setattr(generative_gate, "measure_decode", fake_decode(2.0))


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> tuple[Path, str]:
    """(the exported successor LM, a .txt of the text it predicts)."""
    from exporters.onnx import export_onnx
    from zoo.resolver import resolve_folder

    root = tmp_path_factory.mktemp("successor-lm")
    folder = tiny.successor_lm(root / "model")
    text = root / "held-out.txt"
    text.write_text(tiny.successor_text(folder))
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))  # one grid seed: every case kind
        return export_onnx(resolve_folder(folder), out=root / "artifact").path, str(text)


def _optimize(lm, dest: Path, level: str, **options):
    import zoo

    artifact, text = lm
    return zoo.optimize(artifact, out=dest, level=level, eval_data=text, **options)


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def _nothing_left(dest: Path) -> bool:
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.partial-*"))


def _write_degraded(change):
    """A weight_only stand-in that writes the parent's fp32 graph with ``change`` applied to its initializers."""
    def build(src: Path, dst: Path, level: str, **_):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        weights = {i.name: i for i in model.graph.initializer}
        for name, array in change({n: numpy_helper.to_array(t) for n, t in weights.items()}).items():
            weights[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
        onnx.save(model, str(dst))
        return {"method": "planted fault"}

    return build


# ---------------------------------------------------------------- faithful recipes pass and run torch-free


@pytest.mark.parametrize("level,bits", [("int8-weights", 8), ("int4", 4)])
def test_weight_only_levels_pass_the_gate_and_generate_torch_free(lm, tmp_path, level, bits):
    import zoo

    result = _optimize(lm, tmp_path / level, level)
    record = result.manifest.optimization
    settings = record["recipe"]["quantization"]
    assert record["level"] == level and settings["bits"] == bits and settings["block_size"] == 32
    assert settings["lm_head"]["bits"] == 8 and settings["embedding"].startswith("fp32")
    ops = record["recipe"]["ops"]
    # 2 layers x (q/k/v packed, o, gate/up packed, down) + the head; QK^T and AV are inside GroupQueryAttention
    assert ops["MatMulNBits"] == settings["matmuls_quantised"] == 9 and ops.get("MatMul", 0) == 0
    figures = record["gates"]["generative"]
    assert figures["agreement"] == 1.0 and abs(figures["perplexity_increase_percent"]) < 1.0
    assert figures["perplexity_parent"] < 1.01  # the model knows the held-out text
    assert record["gates"]["limits"]["max_ppl_increase_percent"] == {"int8-weights": 2.0, "int4": 10.0}[level]
    assert zoo.verify_artifact(result.path).passed
    parent, quantised = zoo.load(lm[0]), zoo.load(result.path)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    assert [g.token_ids for g in quantised.generate(prompts, max_new_tokens=12)] == \
        [g.token_ids for g in parent.generate(prompts, max_new_tokens=12)]


def test_auto_tries_int4_and_int8_weights_and_keeps_the_fastest(lm, tmp_path, monkeypatch):
    def measure(parent, candidate, folder, manifest, prompt=None):
        factor = 3.0 if Path(candidate).stem.startswith("int8-weights") else 2.0
        return [gates.SpeedFigure("decode, batch 1", 10.0, 10.0 / factor)]

    monkeypatch.setattr(generative_gate, "measure_decode", measure)
    result = _optimize(lm, tmp_path / "auto", "auto")
    assert [t["level"] for t in result.tried] == ["int4", "int8-weights"] and result.level == "int8-weights"


# ---------------------------------------------------------------- planted faults


def test_an_int4_lm_head_with_one_scale_per_whole_row_is_refused(lm, tmp_path, monkeypatch):
    """K = 64: a block of 64 is the whole row; the outlier channel's weight sets its one scale."""
    monkeypatch.setattr(quantize, "weight_only", functools.partial(quantize.weight_only, head_bits=4,
                                                                   head_block_size=64))
    dest = tmp_path / "coarse-head"
    with pytest.raises(GateError, match="nothing written") as refused:
        _optimize(lm, dest, "int4")
    assert not _check(refused.value.report, "perplexity increase").passed
    assert not _check(refused.value.report, "greedy agreement (16 tokens)").passed
    # the search tried keeping more of the body at 8 bits first; the head's fault is in none of those MatMuls
    # (of 8 body MatMuls: 0, 1, then 2 kept; the last step's own checks follow the earlier steps' lines)
    assert [c.name for c in refused.value.report.checks][:3] == [f"step {i + 1}: {k} nodes kept in int8"
                                                                  for i, k in enumerate((0, 1))] + \
        ["perplexity increase"]
    assert _nothing_left(dest)


def test_the_perplexity_check_refuses_a_degraded_model(lm, tmp_path, monkeypatch):
    import exporters.optimize

    monkeypatch.setattr(exporters.optimize, "WEIGHT_LADDER", (0.0,))  # the planted graph ignores the search
    rng = np.random.default_rng(0)

    def noisy_head(weights):  # every LM-head weight moved by 30% of the head's spread
        name = next(n for n, a in weights.items() if a.ndim == 2 and a.shape[0] == 64 and a.shape[1] > 1000)
        head = weights[name]
        return {name: head + rng.standard_normal(head.shape) * 0.3 * head.std()}

    monkeypatch.setattr(quantize, "weight_only", _write_degraded(noisy_head))
    with pytest.raises(GateError) as refused:
        _optimize(lm, tmp_path / "noisy", "int8-weights")
    ppl = _check(refused.value.report, "perplexity increase")
    assert not ppl.passed and float(ppl.value.rstrip("%")) > 2.0


def test_the_agreement_check_catches_continuations_that_part_where_perplexity_does_not(lm, tmp_path, monkeypatch):
    """The embeddings of the prompts' last tokens ([SEP] here: the MiniLM tokenizer ends every prompt with it) and
    of [CLS] are swapped: tokens never in the held-out text, so it scores as before, while every continuation
    starts elsewhere in the word cycle."""
    import transformers

    import exporters.optimize

    monkeypatch.setattr(exporters.optimize, "WEIGHT_LADDER", (0.0,))  # the planted graph ignores the search
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm[0])
    ends = {tokenizer(p)["input_ids"][-1] for p in generative_gate.PROMPTS} | {tokenizer.cls_token_id}
    last = sorted(ends - set(tokenizer(Path(lm[1]).read_text(), add_special_tokens=False)["input_ids"]))
    assert len(last) >= 2

    def swapped(weights):
        name = next(n for n in weights if n.endswith("embed_tokens.weight"))
        table = weights[name].copy()
        table[last] = table[np.roll(last, 1)]
        return {name: table}

    monkeypatch.setattr(quantize, "weight_only", _write_degraded(swapped))
    with pytest.raises(GateError) as refused:
        _optimize(lm, tmp_path / "parted", "int8-weights")
    agreement = _check(refused.value.report, "greedy agreement (16 tokens)")
    assert _check(refused.value.report, "perplexity increase").passed and not agreement.passed
    assert "parted (prompt@token)" in agreement.detail and "@0" in agreement.detail


def test_the_speed_gate_refuses_a_slower_graph_with_both_timings(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(generative_gate, "measure_decode", fake_decode(0.8))
    dest = tmp_path / "slow"
    with pytest.raises(GateError) as refused:
        _optimize(lm, dest, "int4")
    speed = _check(refused.value.report, "speed at decode, batch 1")
    assert not speed.passed and speed.value == "0.80x" and "parent 10.00 ms" in speed.detail
    assert _nothing_left(dest)


def test_decode_speed_times_both_graphs_step_by_step(lm, monkeypatch):
    from zoo.artifact import read_manifest

    monkeypatch.setattr(generative_gate, "DECODE_STEPS", 4)
    monkeypatch.setattr(generative_gate, "DECODE_REPEATS", 1)
    artifact = lm[0]
    [figure] = REAL_MEASURE_DECODE(artifact / "model.onnx", artifact / "model.onnx", artifact, read_manifest(artifact))
    assert figure.shape == "decode, batch 1" and figure.parent_ms > 0 and figure.optimized_ms > 0


# ---------------------------------------------------------------- options and graphs


def test_levels_and_limits_that_do_not_apply_are_one_error(lm, tmp_path, capsys):
    from zoo.cli import main

    with pytest.raises(ConfigError, match="--level int8 does not apply to text-generation") as info:
        _optimize(lm, tmp_path / "x", "int8", max_ppl_increase=-1)
    assert "--max-ppl-increase -1" in str(info.value)
    with pytest.raises(SystemExit) as code:
        main(["optimize", str(lm[0]), "--out", str(tmp_path / "y"), "--level", "fused"])
    err = capsys.readouterr().err
    assert code.value.code == 1 and err.strip().count("\n") == 0 and "use --level int4, int8-weights" in err


def test_too_little_held_out_text_is_refused_naming_eval_data(lm, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    with pytest.raises(DataError, match="needs at least 128 .* give --eval-data with more text"):
        _optimize((lm[0], str(short)), tmp_path / "z", "int4")


def test_the_search_keeps_the_most_error_prone_matmuls_at_8_bits(lm, tmp_path):
    import onnx

    from zoo.artifact import read_manifest

    artifact = lm[0]
    graph = artifact / "model.onnx"
    data = generative_gate.gate_data(artifact, read_manifest(artifact), lm[1])
    feed = generative_gate.prefill_feed(gates.session(graph), data.windows[0])
    ranked = quantize.rank_weight_error(graph, [feed], "int4")
    errors = [e for _, e in ranked]
    assert len(ranked) == 8 and errors == sorted(errors, reverse=True) and errors[-1] > 0  # the head is apart
    settings = quantize.weight_only(graph, tmp_path / "mixed.onnx", "int4", keep=[n for n, _ in ranked[:3]])
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(tmp_path / "mixed.onnx")).graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()) == [4] * 5 + [8] * 4  # 3 kept and the head
    assert settings["kept"] == {"nodes": sorted(n for n, _ in ranked[:3]), "bits": 8}


def test_a_tied_lm_head_is_untied_and_quantised_and_the_transpose_dropped(tmp_path):
    """SmolLM2's head reads the embedding through a Transpose; the quantiser needs a constant [K, N] weight."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((256, 64)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="body"),
             helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0], name="tie"),
             helper.make_node("MatMul", ["h", "table_t"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 256])],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")])
    src, dst = tmp_path / "tied.onnx", tmp_path / "int4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    settings = quantize.weight_only(src, dst, "int4")
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert settings["lm_head"] == {"node": "head", "bits": 8, "block_size": 32, "kept_fp32": False}
    assert ops == ["Gather", "MatMulNBits", "MatMulNBits"]  # the Transpose is gone; the embedding stays fp32
    ids = np.arange(8, dtype=np.int64)
    expected, got = (ort.InferenceSession(str(p)).run(None, {"ids": ids})[0] for p in (src, dst))
    assert np.abs(got - expected).max() < 0.15 * np.abs(expected).max()


def test_gate_figures_are_recorded_and_the_cli_prints_them(lm, tmp_path, capsys):
    from zoo.cli import main

    dest = tmp_path / "cli"
    with pytest.raises(SystemExit) as code:
        main(["optimize", str(lm[0]), "--out", str(dest), "--level", "int4", "--eval-data", lm[1], "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code.value.code in (0, None) and printed["level"] == "int4"
    assert printed["gates"]["generative"]["agreed_tokens"] == [16] * 16
