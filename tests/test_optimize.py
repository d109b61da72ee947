"""zoo optimize: recipes, the accuracy and speed gates, each with a twin that plants the fault it must catch.

    .venv/bin/pytest tests/test_optimize.py

Timing is never measured here: every test replaces the speed measurement with
fixed figures (speed ratios live in benchmarks/bench_optimize.py), and the speed
gate's own test injects a slower result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters import gates
from tests.speed import REAL_MEASURE_SPEED, fake_speed, twice_as_fast  # noqa: F401  (autouse fixture)
from zoo.artifact import read_manifest
from zoo.errors import ArtifactError, ConfigError, DataError, GateError
from zoo.spec import Tolerances

pytestmark = pytest.mark.xdist_group("optimize")


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory) -> Path:
    """timm's test_resnet fine-tuned on builtin:digits (as the demo does, in one process), then exported."""
    from exporters.onnx import export_onnx
    from zoo.train.finetune import finetune

    work = tmp_path_factory.mktemp("digits")
    run = finetune("timm:test_resnet", "builtin:digits", random_init=True, image_size=32, out=work / "run",
                   epochs=2, batch_size=64, lr=3e-3, progress=False)
    return export_onnx(str(run), out=work / "artifact").path


@pytest.fixture(scope="module")
def plain_text_cls_artifact(tmp_path_factory, tiny_text_classifier) -> Path:
    """Exported with --no-fuse: the parent that --level fused applies to (export fuses by default)."""
    from exporters.onnx import export_onnx

    return export_onnx(str(tiny_text_classifier), out=tmp_path_factory.mktemp("plain") / "text-cls", fuse=False).path


@pytest.fixture(scope="module")
def plain_minilm_artifact(tmp_path_factory, minilm_dir) -> Path:
    """MiniLM with --no-fuse: its attention products are MatMuls of their own (fused, they are inside MHA)."""
    from exporters.onnx import export_onnx

    return export_onnx(str(minilm_dir), out=tmp_path_factory.mktemp("plain") / "minilm", fuse=False).path


def nothing_left(dest: Path) -> bool:
    """No artifact and no staging folder beside it."""
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.partial-*"))


def check(report, name: str):
    return next(c for c in report.checks if c.name == name)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_digits_run_int8_static_keeps_accuracy_and_loads(digits_artifact, tmp_path):
    """Calibrated on the run's validation split; the held-out rows give accuracy before and after."""
    import zoo

    result = zoo.optimize(digits_artifact, out=tmp_path / "int8", level="int8-static")
    record = result.manifest.optimization
    drop = check(result.report, "accuracy drop")
    before, after = (float(x.rstrip("%")) for x in drop.detail.split(" on ")[0].split(" -> "))
    assert before >= 90.0 and before - after <= 0.5 and drop.passed
    assert "validation data (builtin:digits" in record["recipe"]["quantization"]["calibration"]
    assert record["level"] == "int8-static" and record["gates"]["passed"] is True
    assert record["gates"]["rows"] >= record["gates"]["limits"]["min_rows"] == 64  # the sample, recorded
    assert record["parent"]["model_sha256"] == json.loads((digits_artifact / "manifest.json").read_text())[
        "files"]["model.onnx"]["sha256"]
    assert record["recipe"]["ops"].get("QuantizeLinear", 0) > 0 and record["recipe"]["ort_offline_level"] == "basic"
    assert check(result.report, "grid vs torch fp32: top-1 agreement").passed  # the run dir resolves
    assert zoo.verify_artifact(result.path).passed
    labels = zoo.load(result.path).predict(np.zeros((8, 8, 3), dtype=np.uint8), top_k=2).labels
    assert len(labels) == 2 and set(labels) <= set(result.manifest.labels)


@pytest.mark.slow
def test_minilm_int8_passes_the_embedding_gate_and_loads(minilm_artifact, tmp_path):
    import zoo
    from exporters.evaldata import BATCH, PROBE_SENTENCES

    result = zoo.optimize(minilm_artifact, out=tmp_path / "int8", level="int8")
    record = result.manifest.optimization
    # the parent was fused at export: int8 starts from that graph and records its fusions
    assert record["recipe"]["fusions"] == {"Gelu (from Erf)": 6, "SDPA": 6, "MultiHeadAttention": 6,
                                           "MultiHeadAttention bias": 6, "BiasGelu": 6,
                                           "LayerNormalization on rows": 13}
    quant = record["recipe"]["quantization"]
    assert quant["activation_x_activation"] is False and quant["search"][-1]["passed"] is True
    assert float(check(result.report, "parent: minimum cosine").value) >= 0.99
    assert float(check(result.report, "grid vs torch fp32: minimum cosine").value) >= 0.99
    assert record["recipe"]["ops"]["MatMulInteger"] > 0 and record["recipe"]["ops"]["MultiHeadAttention"] == 6
    assert zoo.verify_artifact(result.path).passed
    # the gate's first batch (empty, one word, emoji ...): the cosine >= 0.99 the gate measured on this CPU's
    # int8 kernel must hold through zoo.load too. Other texts, or these in another batch (dynamic int8 scales
    # each batch's activations as a whole), carry no such promise: one measured 0.992 on an AVX2 EPYC.
    texts = list(PROBE_SENTENCES[:BATCH])
    fp32 = np.stack([e.vector for e in zoo.load(minilm_artifact).predict(texts)])
    int8 = np.stack([e.vector for e in zoo.load(result.path).predict(texts)])
    assert (fp32 * int8).sum(1).min() >= 0.99  # unit vectors: the dot product is the cosine


# ---------------------------------------------------------------- planted faults


@pytest.mark.slow
def test_quantising_activation_products_is_refused_by_the_embedding_gate(plain_minilm_artifact, tmp_path,
                                                                         monkeypatch):
    """Q.K^T and attention x V in int8 (the weights left fp32): the cosine gate must refuse it."""
    from exporters import optimize, quantize

    def planted(ctx, path, keep):
        weights = quantize.weight_matmuls(ctx.parent_model)
        return quantize.int8_dynamic(ctx.parent_model, path, keep_fp32=weights, activation_products=True)

    monkeypatch.setattr(optimize, "_int8_ladder", lambda ctx: [[]])
    monkeypatch.setattr(optimize, "_build_int8", planted)
    dest = tmp_path / "int8"
    with pytest.raises(GateError) as info:
        optimize.optimize(plain_minilm_artifact, out=dest, level="int8")
    failed = check(info.value.report, "parent: minimum cosine")
    assert not failed.passed and float(failed.value) < 0.99 and "nothing written" in str(info.value)
    assert nothing_left(dest)


@pytest.mark.slow
def test_calibration_on_mis_scaled_images_is_refused_by_the_classification_gate(digits_artifact, tmp_path,
                                                                                 monkeypatch):
    """Calibrated on the images times 1e6: every activation range is a million times too wide.

    Each real activation then quantises to its zero point, so every quantised tensor is the same for every
    image; at each step of the ladder the stem and head at most stay fp32 and every path from pixels to logits
    crosses a quantised Conv, so the graph answers every image alike. That holds in exact integer arithmetic
    on any int8 kernel (AVX2, VNNI, AMX): no step can pass 99% agreement, and timing is never reached.
    (Constant images, the fault planted here before, leave narrow but real ranges: whether the ladder's last
    step then passed depended on the kernel; it passed on an AVX-512 VNNI/AMX Xeon, later on the EPYC too.)
    """
    from exporters import evaldata, optimize

    real = evaldata.gate_data

    def mis_scaled_calibration(folder, manifest, eval_data):
        data = real(folder, manifest, eval_data)
        for batch in data.calibration.batches:
            for name, array in batch.items():
                batch[name] = array * np.float32(1e6)
        return data

    def never_timed(*args, **kwargs):
        raise AssertionError("a graph that failed the accuracy gate was timed")

    monkeypatch.setattr(optimize, "gate_data", mis_scaled_calibration)
    monkeypatch.setattr(gates, "measure_speed", never_timed)
    dest, kept = tmp_path / "static", tmp_path / "kept"
    with pytest.raises(GateError) as info:
        optimize.optimize(digits_artifact, out=dest, level="int8-static", keep_failed=kept)
    report = info.value.report
    agreement = check(report, "parent: top-1 agreement")
    assert not agreement.passed and float(agreement.value.rstrip("%")) < 50.0  # one answer for ten digits
    steps = [c for c in report.checks if c.name.startswith("step ")]
    assert len(steps) >= 2 and not any(c.passed for c in steps)  # every earlier step of the ladder failed too
    assert nothing_left(dest)
    # the premise, on this CPU's kernels: the last step's graph gives every held-out image the same answer
    held_out = real(digits_artifact, read_manifest(digits_artifact), None).evaluation.batches
    logits = np.concatenate(gates.run_all(gates.session(kept / "int8-static.onnx"), held_out).values)
    assert len(set(logits.argmax(-1).tolist())) == 1


@pytest.mark.slow
def test_a_fusion_that_perturbs_one_weight_is_refused_by_verification(plain_text_cls_artifact, tmp_path,
                                                                      monkeypatch):
    import onnx
    from onnx import numpy_helper

    from exporters import fusion

    real = fusion.fuse_graph

    def perturbing(src, dst):
        counts = real(src, dst)
        model = onnx.load(str(dst))
        # the last MatMul's weight: nothing between it and the logits can hide the change
        last = [n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
        weight = next(t for t in model.graph.initializer if t.name == last)
        array = numpy_helper.to_array(weight).copy()
        array.flat[0] += 1.0
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))
        onnx.save(model, str(dst))
        return counts

    monkeypatch.setattr(fusion, "fuse_graph", perturbing)
    dest = tmp_path / "fused"
    with pytest.raises(GateError) as info:
        fusion_optimize(plain_text_cls_artifact, dest)
    elementwise = check(info.value.report, "parent: element-wise (lossless recipe)")
    assert not elementwise.passed and "max abs" in elementwise.value
    assert nothing_left(dest)


def fusion_optimize(artifact: Path, dest: Path):
    from exporters.optimize import optimize

    return optimize(artifact, out=dest, level="fused")


@pytest.mark.slow
def test_the_real_fusion_of_the_same_model_passes(plain_text_cls_artifact, tmp_path):
    import zoo

    result = fusion_optimize(plain_text_cls_artifact, tmp_path / "fused")
    assert check(result.report, "parent: element-wise (lossless recipe)").passed
    assert result.manifest.optimization["recipe"]["fusions"]["MultiHeadAttention"] >= 2
    parent = json.loads((plain_text_cls_artifact / "manifest.json").read_text())
    assert result.manifest.tolerances == parent["tolerances"]
    assert zoo.verify_artifact(result.path).passed


@pytest.mark.slow
def test_a_slower_result_is_refused_with_both_timings(timm_artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(gates, "measure_speed", fake_speed(0.8))
    dest = tmp_path / "slow"
    with pytest.raises(GateError) as info:
        fusion_optimize(timm_artifact, dest)
    speed = [c for c in info.value.report.checks if c.name.startswith("speed at")]
    assert speed and all(not c.passed and c.value == "0.80x" for c in speed)
    assert "parent 10.00 ms, optimised 12.50 ms" in speed[0].detail
    assert nothing_left(dest)


@pytest.mark.slow
def test_keep_failed_holds_the_refused_graph_and_the_report(timm_artifact, tmp_path, monkeypatch):
    from exporters.optimize import optimize

    monkeypatch.setattr(gates, "measure_speed", fake_speed(0.8))
    kept = tmp_path / "kept"
    with pytest.raises(GateError):
        optimize(timm_artifact, out=tmp_path / "fused", level="fused", keep_failed=kept)
    report = json.loads((kept / "refusal.json").read_text())
    assert (kept / "fused.onnx").stat().st_size > 0 and not (kept / "manifest.json").exists()
    assert report["passed"] is False and "nothing written" in report["message"]
    with pytest.raises(GateError):  # an earlier refusal's folder is replaced by the next one
        optimize(timm_artifact, out=tmp_path / "fused", level="fused", keep_failed=kept)
    assert sorted(p.name for p in kept.iterdir()) == ["fused.onnx", "refusal.json"]
    with pytest.raises(ConfigError, match="is the destination itself"):
        optimize(timm_artifact, out=tmp_path / "same", level="fused", keep_failed=tmp_path / "same")


def test_keep_failed_never_overwrites_a_users_folder(timm_artifact, tmp_path):
    from exporters.optimize import optimize

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fused.onnx").write_text("my own graph")
    with pytest.raises(ConfigError, match="is not an earlier refusal's folder"):
        optimize(timm_artifact, out=tmp_path / "fused", level="fused", keep_failed=mine)
    assert (mine / "fused.onnx").read_text() == "my own graph" and nothing_left(tmp_path / "fused")


def test_speed_measurement_times_both_graphs_at_every_shape(timm_artifact, monkeypatch):
    """The mechanics only (both graphs, each shape, positive medians); no ratio is asserted."""
    monkeypatch.setattr(gates, "SPEED_BUDGET_S", 0.01)
    shapes = gates.speed_shapes(timm_artifact, read_manifest(timm_artifact), None)
    [figures] = REAL_MEASURE_SPEED(timm_artifact / "model.onnx", [(timm_artifact / "model.onnx", None)], shapes)
    assert [f.shape for f in figures] == ["batch 1", "batch 8"]
    assert all(f.parent_ms > 0 and f.optimized_ms > 0 for f in figures)


# ---------------------------------------------------------------- options and inputs


def test_fp16_on_a_cpu_only_machine_says_so_in_one_line(timm_artifact, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    from exporters.optimize import optimize

    with pytest.raises(ConfigError, match="fp16 runs on the CUDA execution provider") as info:
        optimize(timm_artifact, out=tmp_path / "fp16", level="fp16")
    assert "\n" not in str(info.value) and not (tmp_path / "fp16").exists()


def test_bad_options_are_reported_together(text_cls_artifact, tmp_path):
    from exporters.optimize import optimize

    with pytest.raises(ConfigError) as info:
        optimize(text_cls_artifact, out=tmp_path / "x", level="int3", max_drop=-1)
    assert "--level 'int3'" in str(info.value) and "--max-drop -1" in str(info.value)
    with pytest.raises(ConfigError, match="int4 quantises the weights of text-generation models"):
        optimize(text_cls_artifact, out=tmp_path / "x", level="int4")
    with pytest.raises(ConfigError, match="int8-static calibrates image models"):
        optimize(text_cls_artifact, out=tmp_path / "x", level="int8-static")


def test_tampered_parent_is_refused(timm_artifact, tmp_path):
    from exporters.optimize import optimize
    from tests.artifacts import copy_artifact

    parent = copy_artifact(timm_artifact, tmp_path / "parent")
    (parent / "preprocess.json").write_text("{}")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        optimize(parent, out=tmp_path / "out", level="fused")


@pytest.mark.slow
def test_auto_tries_each_level_and_an_optimised_artifact_is_not_optimised_again(timm_artifact, tmp_path, monkeypatch):
    from exporters.optimize import optimize
    from zoo.runtime import engines

    pytest.importorskip("openvino")
    monkeypatch.setattr(engines, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})  # either CPU kind
    result = optimize(timm_artifact, out=tmp_path / "auto", level="auto")
    assert [t["level"] for t in result.tried] == ["bf16", "openvino", "fused", "int8-static"]
    assert [t["engine"]["precision"] for t in result.tried] == ["bf16", "f32", "f32", "f32"]
    assert result.manifest.optimization["tried"] == result.tried
    assert any("random pixels" in note for note in result.notes)  # no run, no --eval-data: said loudly
    with pytest.raises(ConfigError, match="already optimised"):
        optimize(result.path, out=tmp_path / "again", level="fused")


@pytest.mark.slow
def test_labelled_eval_data_measures_the_accuracy_drop(text_cls_artifact, tmp_path):
    from exporters.optimize import optimize
    from tests.test_data import ROWS, write_rows

    data = write_rows(tmp_path / "eval.csv", ROWS * 2, "csv")
    result = optimize(text_cls_artifact, out=tmp_path / "int8", level="int8", eval_data=str(data))
    drop = check(result.report, "accuracy drop")
    assert drop.value.endswith("points") and f"on {len(ROWS) * 2} labelled rows" in drop.detail


def test_eval_data_with_unknown_labels_is_refused(text_cls_artifact, tmp_path):
    from exporters.optimize import optimize

    data = tmp_path / "eval.csv"
    data.write_text("text,label\ngood film,delighted\nbad film,furious\n")
    with pytest.raises(DataError, match="labels the model does not know: delighted"):
        optimize(text_cls_artifact, out=tmp_path / "int8", level="int8", eval_data=str(data))


def image_folder(folder: Path, count: int) -> Path:
    """An imagefolder of ``count`` small PNGs labelled like the timm artifact (cat, dog, bird)."""
    from PIL import Image

    rng = np.random.default_rng(count)
    for i in range(count):
        label = ("cat", "dog", "bird")[i % 3]
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
    return folder


def test_a_gate_below_its_minimum_sample_is_refused_and_at_the_minimum_accepted(timm_artifact, tmp_path):
    """Half of a small data set calibrates: 127 images leave the minimum of 64 to judge on, 126 one too few."""
    from exporters.evaldata import MIN_GATE_ROWS, gate_data

    manifest = read_manifest(timm_artifact)
    small = image_folder(tmp_path / "small", 2 * MIN_GATE_ROWS - 2)
    with pytest.raises(DataError, match=rf"judge on only {MIN_GATE_ROWS - 1} rows .* give --eval-data with at "
                                        rf"least {2 * MIN_GATE_ROWS} rows") as info:
        gate_data(timm_artifact, manifest, str(small))
    assert "\n" not in str(info.value)
    enough = gate_data(timm_artifact, manifest, str(image_folder(tmp_path / "enough", 2 * MIN_GATE_ROWS - 1)))
    assert enough.evaluation.rows == MIN_GATE_ROWS and enough.calibration.rows == MIN_GATE_ROWS - 1


def test_cli_too_few_eval_images_is_one_line_naming_eval_data(timm_artifact, tmp_path, capsys):
    dest = tmp_path / "static"
    small = image_folder(tmp_path / "small", 16)  # the defect: 8 calibrate, 8 were judged
    code, _, err = _zoo(["optimize", str(timm_artifact), "--out", str(dest), "--level", "int8-static",
                         "--eval-data", str(small)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # stderr also shows the stages
    assert code == 1 and len(errors) == 1 and "only 8 rows" in errors[0] and "give --eval-data" in errors[0]
    assert "Traceback" not in err
    assert nothing_left(dest)


def test_grid_fallback_judges_on_the_minimum_sample(timm_artifact):
    from exporters.evaldata import MIN_GATE_ROWS, gate_data

    assert gate_data(timm_artifact, read_manifest(timm_artifact), None).evaluation.rows == MIN_GATE_ROWS


def test_optimize_without_the_export_extra_names_it_in_one_line(timm_artifact, tmp_path, monkeypatch):
    """The runtime-only install: no torch, no onnxscript, no onnx_ir (it came with onnxscript)."""
    import subprocess

    from exporters.optimize import optimize
    from tests.serving import TRAINING_STACK, server_env, zoo_command

    blocked = (*TRAINING_STACK, "onnxscript", "onnx_ir")
    dest = tmp_path / "fused"
    done = subprocess.run(zoo_command("optimize", str(timm_artifact), "--out", str(dest), "--level", "fused",
                                      blocked=blocked), capture_output=True, text=True, timeout=120, env=server_env())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "pip install 'zoo-toolkit[train]'" in done.stderr
    assert nothing_left(dest)
    monkeypatch.setitem(sys.modules, "onnx_ir", None)  # the Python API raises the same message, typed
    with pytest.raises(ConfigError, match=r"zoo optimize needs the training and export extra \(onnx_ir"):
        optimize(timm_artifact, out=dest, level="fused")


def test_probe_sentences_cover_the_hard_cases():
    from exporters.evaldata import PROBE_SENTENCES

    assert len(PROBE_SENTENCES) >= 50 and "" in PROBE_SENTENCES
    assert any(len(s.split()) >= 300 for s in PROBE_SENTENCES)
    assert any(ord(ch) > 0x1F000 for s in PROBE_SENTENCES for ch in s)  # emoji
    assert sum(any(ord(ch) > 0x3000 for ch in s) for s in PROBE_SENTENCES) >= 4  # CJK, Korean ...


# ---------------------------------------------------------------- the tasks' gates


def test_each_task_names_its_gate():
    from zoo.tasks import get_task
    from zoo.tasks.base import Task

    loose = Tolerances(atol=0.0, rtol=0.0)
    assert get_task("feature-extraction").optimization_gate(loose).limits == {"min_cosine": 0.99, "mean_cosine": 0.995}
    classifier = get_task("text-classification").optimization_gate(loose)
    tagger = get_task("token-classification").optimization_gate(loose)
    assert classifier.limits == {"min_agreement_percent": 99.0} and classifier.labelled and not tagger.labelled
    assert type(Task.optimization_gate(get_task("image-classification"), loose)).__name__ == "CosineGate"  # default


def test_token_gate_counts_real_tokens_only_and_a_changed_pad_is_no_failure():
    from zoo.tasks import get_task

    reference = np.zeros((1, 4, 3), dtype=np.float32)
    reference[..., 0] = 1.0
    got = reference.copy()
    got[0, 3] = [0.0, 0.0, 2.0]  # only the padding position changes its top-1
    mask = np.array([[1, 1, 1, 0]])
    gate = get_task("token-classification").optimization_gate(Tolerances(atol=0.0, rtol=0.0))
    gate.add(reference, got, mask)
    (check_,) = gate.checks("parent", "test")
    assert check_.passed and check_.value == "100.00%" and "0 of 3 tokens" in check_.detail
    gate.add(reference, got, np.ones((1, 4), dtype=np.int64))  # the same change on a real token fails
    (check_,) = gate.checks("parent", "test")
    assert not check_.passed and "1 of 7 tokens" in check_.detail


def test_gates_refuse_an_output_of_the_wrong_shape():
    from zoo.tasks import get_task

    loose = Tolerances(atol=0.0, rtol=0.0)
    for name in ("feature-extraction", "image-classification"):
        gate = get_task(name).optimization_gate(loose)
        reference = np.eye(4, dtype=np.float32)
        gate.add(reference, reference[:, :3], None)
        assert not any(c.passed for c in gate.checks("parent", "test")), name


# ---------------------------------------------------------------- the CLI


def _zoo(argv: list[str], capsys) -> tuple[int, str, str]:
    from zoo.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.mark.slow
def test_cli_optimize_json_then_verify(timm_artifact, tmp_path, capsys):
    dest = tmp_path / "static"
    code, out, _ = _zoo(["optimize", str(timm_artifact), "--out", str(dest), "--level", "int8-static", "--json"],
                        capsys)
    assert code == 0
    result = json.loads(out)
    assert result["path"] == str(dest.resolve()) and result["level"] == "int8-static"
    assert result["gates"]["passed"] is True and result["parent"]["path"] == str(timm_artifact.resolve())
    code, out, _ = _zoo(["verify", str(dest)], capsys)
    assert code == 0 and "verified" in out


@pytest.mark.slow
def test_cli_refusal_exits_one_with_the_table_and_writes_nothing(timm_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gates, "measure_speed", fake_speed(0.5))
    dest = tmp_path / "fused"
    code, _, err = _zoo(["optimize", str(timm_artifact), "--out", str(dest), "--level", "fused"], capsys)
    assert code == 1 and err.count("error: ") == 1 and "nothing written to" in err
    assert "speed at batch 8" in err and "FAIL" in err and "0.50x" in err and "Traceback" not in err
    assert nothing_left(dest)


def test_cli_fp16_without_cuda_is_one_line(timm_artifact, tmp_path, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    code, _, err = _zoo(["optimize", str(timm_artifact), "--out", str(tmp_path / "h"), "--level", "fp16"], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "CUDA execution provider" in err


def test_cli_unknown_level_lists_the_choices(timm_artifact, capsys):
    code, _, err = _zoo(["optimize", str(timm_artifact), "--level", "int3"], capsys)
    assert code == 2 and "int8-static" in err


def test_cli_export_optimize_typo_fails_before_exporting(tiny_timm_folder, tmp_path, capsys):
    code, _, err = _zoo(["export", str(tiny_timm_folder), "--out", str(tmp_path / "a"), "--optimize", "int3"], capsys)
    assert code == 1 and "--optimize 'int3'" in err and not (tmp_path / "a").exists()


@pytest.mark.slow
def test_cli_export_with_optimize_writes_both_artifacts(tiny_timm_folder, tmp_path, capsys):
    dest = tmp_path / "art"
    code, out, _ = _zoo(["export", str(tiny_timm_folder), "--out", str(dest), "--optimize", "int8-static"], capsys)
    assert code == 0 and (dest / "manifest.json").is_file()
    optimised = json.loads((tmp_path / "art-int8-static" / "manifest.json").read_text())
    assert optimised["optimization"]["parent"]["path"] == str(dest.resolve())
    assert "speed-up over the parent" in out


def test_fp16_recipe_keeps_float32_inputs_and_outputs(timm_artifact, tmp_path):
    """The conversion itself (running it needs CUDA): fp16 weights inside, fp32 at the graph's edges."""
    import onnx

    from exporters.quantize import fp16

    settings = fp16(timm_artifact / "model.onnx", tmp_path / "fp16.onnx")
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    edges = {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert edges == {onnx.TensorProto.FLOAT} and settings["provider"] == "CUDAExecutionProvider"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


@pytest.mark.gpu
@pytest.mark.slow
def test_fp16_on_cuda_passes_the_gates(timm_artifact, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime with the CUDA execution provider")
    import zoo

    result = zoo.optimize(timm_artifact, out=tmp_path / "fp16", level="fp16")
    assert result.manifest.optimization["providers"][0] == "CUDAExecutionProvider"
    assert check(result.report, "parent: top-1 agreement").passed and zoo.verify_artifact(result.path).passed
