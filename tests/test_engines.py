"""Engines (onnxruntime, OpenVINO), bf16 as a gated recipe, and the faults each check must catch.

    .venv/bin/pytest tests/test_engines.py

No timing is measured here: the speed gate is fed fixed figures. Nothing depends on the CPU:
the bf16 probe reads flags that every test fakes both ways, and the fault that needs bf16
arithmetic (golden data written in float32 replayed under bf16) runs on a stand-in bf16 engine
that rounds the graph's weights to bf16, which behaves the same on every CPU.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters import gates
from tests.speed import REAL_MEASURE_SPEED, fake_speed, twice_as_fast  # noqa: F401  (autouse fixture)
from zoo.artifact import read_manifest, write_manifest
from zoo.errors import ArtifactError, ConfigError, GateError, VerificationError
from zoo.runtime import engines
from zoo.runtime.engines import Engine

pytestmark = pytest.mark.xdist_group("optimize")
openvino = pytest.importorskip("openvino")  # the dev extra installs it; a runtime-only install skips these

WITH_BF16 = {"fpu", "avx2", "avx512f", "avx512_bf16"}
WITHOUT_BF16 = {"fpu", "avx2", "avx512f", "avx512_vnni"}


def fake_cpu(monkeypatch, flags: set[str]) -> None:
    monkeypatch.setattr(engines, "cpu_flags", lambda: set(flags))


def _zoo(argv: list[str], capsys) -> tuple[int, str, str]:
    from zoo.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def copy_with(artifact: Path, dest: Path, **changes: Any) -> Path:
    """A copy of ``artifact`` whose manifest carries ``changes`` (rehashed, as the writer would)."""
    shutil.copytree(artifact, dest)
    write_manifest(dest, read_manifest(dest).replace(**changes))
    return dest


# ---------------------------------------------------------------- the engines


def test_openvino_runs_the_artifact_like_onnxruntime(text_cls_artifact):
    import zoo

    texts = ["I loved this film", "Terrible", "The quick brown fox jumps over the lazy dog."]
    ort = zoo.load(text_cls_artifact)
    ov = zoo.load(text_cls_artifact, engine="openvino")
    assert ort.engine == Engine() and ov.engine == Engine("openvino", "f32")  # f32 stated: OpenVINO's bf16 default
    assert "openvino f32" in repr(ov) and ov.providers == ["OpenVINO CPU (f32)"]
    feed = ort.preprocess(texts).arrays
    np.testing.assert_allclose(ov(**feed)["logits"], ort(**feed)["logits"], atol=1e-5, rtol=1e-4)
    assert [r.label for r in ov.predict(texts)] == [r.label for r in ort.predict(texts)]


def test_the_manifest_names_the_engine_and_an_absent_openvino_falls_back_in_one_warning(text_cls_artifact, tmp_path,
                                                                                          monkeypatch):
    import zoo

    art = copy_with(text_cls_artifact, tmp_path / "ov", engine={"name": "openvino", "precision": "f32"})
    assert zoo.load(art).engine == Engine("openvino", "f32")
    monkeypatch.setattr(engines, "installed", lambda name: name == "onnxruntime")
    with pytest.warns(engines.EngineFallbackWarning) as caught:
        model = zoo.load(art)
    assert model.engine == Engine() and len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and "onnxruntime" in message and "zoo-toolkit[openvino]" in message
    with pytest.raises(ConfigError, match=r"engine openvino is not installed; install it with: pip install "
                                          r"'zoo-toolkit\[openvino\]'"):
        zoo.load(art, engine="openvino")


def test_cli_engine_not_installed_is_one_line_naming_the_extra(text_cls_artifact, monkeypatch, capsys):
    monkeypatch.setattr(engines, "installed", lambda name: name == "onnxruntime")
    for argv in (["predict", str(text_cls_artifact), "good", "--engine", "openvino"],
                 ["bench", str(text_cls_artifact), "-n", "1", "--engine", "openvino"],
                 ["verify", str(text_cls_artifact), "--engine", "openvino"]):
        code, _, err = _zoo(argv, capsys)
        assert code == 1 and err.strip().count("\n") == 0 and "zoo-toolkit[openvino]" in err, (argv, err)


def test_text_generation_on_openvino_is_one_clear_line(text_cls_artifact):
    manifest = read_manifest(text_cls_artifact).replace(task="text-generation")
    with pytest.raises(ConfigError, match="text-generation artifact, which runs on onnxruntime only"):
        engines.choose(manifest, "openvino")
    assert engines.choose(manifest, None) == Engine()
    edited = manifest.replace(engine={"name": "openvino", "precision": "f32"})  # a manifest no optimize writes
    with pytest.raises(ConfigError, match="text-generation artifact, which runs on onnxruntime only"):
        engines.choose(edited, None)
    assert engines.choose(edited, "onnxruntime") == Engine()


def test_a_manifest_naming_an_unknown_engine_is_refused(text_cls_artifact):
    from zoo.manifest import Manifest

    data = json.loads((text_cls_artifact / "manifest.json").read_text())
    for bad in ({"name": "tensorrt", "precision": "f32"}, {"name": "openvino", "precision": "int4"},
                {"name": "openvino"}):
        with pytest.raises(ArtifactError, match="engine = .*valid: {name: onnxruntime | openvino"):
            Manifest.from_dict({**data, "engine": bad})
    with pytest.raises(ConfigError, match="precision bf16 is an OpenVINO setting"):
        Engine("onnxruntime", "bf16")


def test_verify_replays_golden_data_on_either_engine(text_cls_artifact):
    from exporters.verify import verify_artifact

    on_ov = verify_artifact(text_cls_artifact, engine="openvino")
    assert on_ov.passed and any(c.name.endswith("on openvino f32") for c in on_ov.checks)
    assert not any("openvino" in c.name for c in verify_artifact(text_cls_artifact).checks)


# ---------------------------------------------------------------- the CPU probe


def test_bf16_probe_reads_the_cpu_flags_both_ways(monkeypatch):
    fake_cpu(monkeypatch, WITH_BF16)
    assert engines.bf16_compute() == (True, "has avx512_bf16")
    fake_cpu(monkeypatch, {"avx2", "amx_bf16", "amx_tile"})
    assert engines.bf16_compute() == (True, "has amx_bf16")
    fake_cpu(monkeypatch, WITHOUT_BF16)
    assert engines.bf16_compute() == (False, "lacks avx512_bf16 and amx_bf16")
    assert engines.relevant_flags() == ["avx2", "avx512f", "avx512_vnni"]


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16_compute(text_cls_artifact, tmp_path, monkeypatch, capsys):
    import zoo

    fake_cpu(monkeypatch, WITHOUT_BF16)
    dest = tmp_path / "bf16"
    with pytest.raises(ConfigError, match="--level bf16 needs a CPU that computes in bf16, and this one lacks "
                                          "avx512_bf16 and amx_bf16"):
        zoo.optimize(text_cls_artifact, out=dest, level="bf16")
    code, _, err = _zoo(["optimize", str(text_cls_artifact), "--out", str(dest), "--level", "bf16"], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "avx512_bf16" in err
    assert not dest.exists()


def test_auto_tries_bf16_only_where_the_cpu_has_it(monkeypatch):
    from exporters.optimize import _levels
    from zoo.tasks import get_task

    task = get_task("feature-extraction")
    fake_cpu(monkeypatch, WITH_BF16)
    assert _levels("auto", task) == ["bf16", "openvino", "fused", "int8"]
    fake_cpu(monkeypatch, WITHOUT_BF16)
    assert _levels("auto", task) == ["openvino", "fused", "int8"]
    monkeypatch.setattr(engines, "installed", lambda name: name == "onnxruntime")
    assert _levels("auto", task) == ["fused", "int8"]


# ---------------------------------------------------------------- bf16 as a recipe


def round_to_bf16(source: Path, dest: Path) -> Path:
    """``source`` computing as bf16 hardware does: weights rounded to bf16, every float result rounded too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(source)))
    floats = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            bits = array.view(np.uint32).astype(np.uint64)
            rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded.reshape(array.shape), init.name))
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.output[0] in floats:
            exact, name = f"{node.output[0]}.f32", node.output[0]
            node.output[0] = exact
            nodes += [helper.make_node("Cast", [exact], [f"{name}.bf16"], to=TensorProto.BFLOAT16),
                      helper.make_node("Cast", [f"{name}.bf16"], [name], to=TensorProto.FLOAT)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dest))
    return dest


@pytest.fixture
def emulated_bf16(monkeypatch, tmp_path):
    """OpenVINO's bf16 replaced by weights rounded to bf16 on onnxruntime: bf16-sized error on any CPU."""
    real = engines.open_session

    def open_session(path, engine, *, threads=None, **options):
        if engine.precision != "bf16":
            return real(path, engine, threads=threads, **options)
        rounded = round_to_bf16(Path(path), tmp_path / f"bf16-{len(list(tmp_path.glob('bf16-*')))}.onnx")
        return engines.onnxruntime_session(rounded, providers=["CPUExecutionProvider"], threads=threads)

    monkeypatch.setattr(engines, "open_session", open_session)
    fake_cpu(monkeypatch, WITH_BF16)


def test_bf16_recipe_records_the_engine_and_keeps_the_graph(text_cls_artifact, tmp_path, emulated_bf16):
    import zoo
    from exporters.verify import verify_artifact

    result = zoo.optimize(text_cls_artifact, out=tmp_path / "bf16", level="bf16")
    assert result.manifest.engine == {"name": "openvino", "precision": "bf16"}
    assert result.manifest.optimization["engine"] == result.manifest.engine
    assert result.manifest.optimization["recipe"]["graph"] == "the parent's, unchanged"
    assert (result.path / "model.onnx").read_bytes() == (text_cls_artifact / "model.onnx").read_bytes()
    parent_tol = read_manifest(text_cls_artifact).tolerances
    assert result.manifest.tolerances["atol"] > parent_tol["atol"]  # room for the measured bf16 difference
    report = verify_artifact(result.path)
    assert report.passed and any(c.name.endswith("on openvino bf16") for c in report.checks)
    assert zoo.load(result.path).engine == Engine("openvino", "bf16")


def test_bf16_golden_data_written_in_fp32_with_the_fp32_tolerance_fail_the_replay(minilm_artifact, tmp_path,
                                                                                  emulated_bf16):
    """The planted fault: an artifact that says bf16 but whose golden data and limits are float32's (MiniLM: real
    weights, unit-length embeddings, where bf16 moves values by ~1e-3 against float32's 1e-4 + 1e-3 of a row)."""
    from exporters.verify import verify_artifact

    art = copy_with(minilm_artifact, tmp_path / "planted", engine={"name": "openvino", "precision": "bf16"})
    with pytest.raises(VerificationError) as info:
        verify_artifact(art)
    failed = [c for c in info.value.report.checks if not c.passed]
    assert failed and all(c.name.startswith("golden") and c.name.endswith("on openvino bf16") for c in failed)
    assert verify_artifact(art, engine="onnxruntime").passed  # the same data on the engine they were written on


def test_bf16_on_the_real_engine_passes_its_own_gates(text_cls_artifact, tmp_path, monkeypatch):
    """OpenVINO itself: bf16 where the CPU computes it, float32 where it does not; the gates hold either way."""
    import zoo
    from exporters.verify import verify_artifact

    fake_cpu(monkeypatch, WITH_BF16)
    result = zoo.optimize(text_cls_artifact, out=tmp_path / "bf16", level="bf16")
    assert result.manifest.engine == {"name": "openvino", "precision": "bf16"} and verify_artifact(result.path).passed
    model = zoo.load(result.path)
    assert model.providers == ["OpenVINO CPU (bf16)"] and model.predict("I loved this film").label


def test_an_engine_recipe_slower_than_its_parent_is_refused_with_both_timings(text_cls_artifact, tmp_path,
                                                                               monkeypatch):
    import zoo

    monkeypatch.setattr(gates, "measure_speed", fake_speed(0.8))
    dest = tmp_path / "slow"
    with pytest.raises(GateError) as info:
        zoo.optimize(text_cls_artifact, out=dest, level="openvino")
    speed = [c for c in info.value.report.checks if c.name.startswith("speed at")]
    assert speed and all(not c.passed and c.value == "0.80x" for c in speed)
    assert "parent 10.00 ms, optimised 12.50 ms" in speed[0].detail and not dest.exists()
    monkeypatch.setattr(gates, "measure_speed", fake_speed(1.5))
    result = zoo.optimize(text_cls_artifact, out=dest, level="openvino")
    assert all(c.passed and c.value == "1.50x" for c in result.report.checks if c.name.startswith("speed at"))
    assert result.manifest.engine == {"name": "openvino", "precision": "f32"}


# ---------------------------------------------------------------- an engine that reorders its outputs


def two_output_copy(artifact: Path, dest: Path) -> Path:
    """``artifact`` with a second output (the logits negated), golden data and manifest rewritten to match."""
    import onnx

    from exporters.golden import golden_sets, read_golden, write_golden
    from exporters.verify import run_session
    from zoo.manifest import TensorInfo

    shutil.copytree(artifact, dest)
    model = onnx.load(str(dest / "model.onnx"))
    first = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Neg", [first.name], ["negated"]))
    negated = onnx.ValueInfoProto()
    negated.CopyFrom(first)
    negated.name = "negated"
    model.graph.output.append(negated)
    onnx.save(model, str(dest / "model.onnx"))
    session = gates.session(dest / "model.onnx")
    for index, data_set in enumerate(golden_sets(dest)):
        inputs, _ = read_golden(data_set)
        shutil.rmtree(data_set)
        write_golden(dest, index, inputs, run_session(session, inputs))
    manifest = read_manifest(dest)
    out = manifest.outputs[0]
    write_manifest(dest, manifest.replace(outputs=(out, TensorInfo("negated", out.dtype, out.shape))))
    return dest


class ReorderingSession:
    """A faulty engine: it returns every output in its graph order, whatever order the caller named them in."""

    def __init__(self, path: Path, precision: str, threads: int | None):
        self._inner = engines.OpenVINOSession(path, precision, threads)

    def get_inputs(self) -> list[Any]:
        return self._inner.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self._inner.get_outputs()

    def get_providers(self) -> list[str]:
        return ["reordering"]

    def run(self, names, feed):
        return self._inner.run(None, feed)[::-1]


def test_verification_catches_an_engine_that_reorders_outputs(text_cls_artifact, tmp_path, monkeypatch):
    from exporters.verify import verify_artifact

    art = two_output_copy(text_cls_artifact, tmp_path / "two")
    assert verify_artifact(art, engine="openvino").passed  # the real engine looks outputs up by name
    monkeypatch.setattr(engines, "OpenVINOSession", ReorderingSession)
    with pytest.raises(VerificationError) as info:
        verify_artifact(art, engine="openvino")
    failed = [c for c in info.value.report.checks if not c.passed]
    assert failed and all(c.name.startswith("golden") for c in failed)


def test_openvino_session_answers_by_name_in_the_order_asked(text_cls_artifact, tmp_path):
    art = two_output_copy(text_cls_artifact, tmp_path / "two")
    session = engines.OpenVINOSession(art / "model.onnx", "f32", 1)
    feed = {i.name: np.ones((2, 5), dtype=np.int64) for i in session.get_inputs()}
    logits, negated = session.run(["logits", "negated"], feed)
    swapped = session.run(["negated", "logits"], feed)
    assert [o.name for o in session.get_outputs()] == ["logits", "negated"]
    np.testing.assert_array_equal(negated, -logits)
    np.testing.assert_array_equal(swapped[0], negated)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(session.run(None, feed)[0], logits)


# ---------------------------------------------------------------- the speed gate against eager torch


def speed_against_torch(optimized_ms: float, torch_ms: float, seen: list[Any]):
    """A measure_speed stand-in: the parent 10 ms, the candidate and eager torch as given; records torch_call."""
    def measure(parent, contenders, shapes, providers=None, torch_call=None):
        seen.append(torch_call)
        return [[gates.SpeedFigure(shape, 10.0, optimized_ms, torch_ms) for shape in shapes] for _ in contenders]

    return measure


def test_a_recipe_slower_than_eager_torch_is_refused_and_a_faster_one_kept(text_cls_artifact, tmp_path, monkeypatch):
    import zoo

    seen: list[Any] = []
    monkeypatch.setattr(gates, "measure_speed", speed_against_torch(5.0, 4.0, seen))  # 2x the parent, 0.8x torch
    dest = tmp_path / "ov"
    with pytest.raises(GateError) as info:
        zoo.optimize(text_cls_artifact, out=dest, level="openvino")
    vs_torch = [c for c in info.value.report.checks if c.name.startswith("speed vs torch fp32 eager")]
    assert [c.name for c in vs_torch] == ["speed vs torch fp32 eager at 1x32", "speed vs torch fp32 eager at 8x128"]
    assert all(not c.passed and c.value == "0.80x" and "torch 4.00 ms, optimised 5.00 ms" in c.detail
               for c in vs_torch)
    assert all(c.passed for c in info.value.report.checks if c.name.startswith("speed at"))
    assert not dest.exists() and callable(seen[0])  # the source resolves: eager torch was handed to the timer
    monkeypatch.setattr(gates, "measure_speed", speed_against_torch(5.0, 6.0, seen))
    result = zoo.optimize(text_cls_artifact, out=dest, level="openvino")
    assert all(c.passed for c in result.report.checks if c.name.startswith("speed vs torch"))


def test_speed_measurement_times_eager_torch_in_the_same_turns(text_cls_artifact, monkeypatch):
    """The mechanics only (each call taken at each shape, positive medians); no ratio is asserted."""
    monkeypatch.setattr(gates, "SPEED_BUDGET_S", 0.01)
    calls: list[tuple[int, ...]] = []
    shapes = gates.speed_shapes(text_cls_artifact, read_manifest(text_cls_artifact), None)
    [figures] = REAL_MEASURE_SPEED(text_cls_artifact / "model.onnx",
                                   [(text_cls_artifact / "model.onnx", Engine("openvino", "f32"))], shapes,
                                   torch_call=lambda feed: lambda: calls.append(feed["input_ids"].shape))
    assert [f.shape for f in figures] == ["1x32", "8x128"]
    assert set(calls) == {feed["input_ids"].shape for feed in shapes.values()}
    assert all(f.parent_ms > 0 and f.optimized_ms > 0 and f.torch_ms > 0 for f in figures)


def test_bench_labels_the_engine_it_timed(text_cls_artifact):
    import zoo
    from zoo.runtime.bench import bench

    report = bench(zoo.load(text_cls_artifact, engine="openvino"), batch_sizes=[1], iterations=1, warmup=0)
    assert [t.engine for t in report.timings] == ["openvino f32"] and report.providers == ["OpenVINO CPU (f32)"]


def test_auto_prints_what_it_tried_with_the_cpu_flags():
    from types import SimpleNamespace

    from rich.console import Console

    from zoo.cli.optimize import tried_table

    speed = [{"shape": "8x128", "parent_ms": 100.0, "optimized_ms": 40.0, "torch_ms": 90.0}]
    tried = [{"level": "int8", "engine": {"name": "onnxruntime", "precision": "f32"}, "passed": True,
              "speedup": 1.4, "failed": [], "speed": speed, "accuracy": "min cosine 0.9924"},
             {"level": "bf16", "engine": {"name": "openvino", "precision": "bf16"}, "passed": True,
              "speedup": 2.5, "failed": [], "speed": speed},
             {"level": "openvino", "engine": {"name": "openvino", "precision": "f32"}, "passed": False,
              "speedup": 0.0, "failed": ["speed at 8x128: 0.90x (limit >= 1.05x the parent)"], "speed": []},
             {"level": "fused", "engine": {"name": "onnxruntime", "precision": "f32"}, "passed": False,
              "speedup": 0.0, "failed": ["not tried: skipped (limit tried where it could be kept)"], "speed": [],
              "skipped": "planted reason"}]
    result = SimpleNamespace(level="bf16", tried=tried, manifest=SimpleNamespace(optimization={
        "cpu": {"model": "AMD EPYC", "flags": ["avx2", "avx512_bf16"]}}))
    console = Console(width=200, record=True)
    console.print(tried_table(result))
    text = console.export_text()
    assert "AMD EPYC (avx2, avx512_bf16)" in text and "8x128: 2.50x" in text and "8x128: 2.25x" in text
    assert "min cosine 0.9924" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert "kept" in rows["bf16"] and "passed" in rows["int8"] and "refused: speed at 8x128" in rows["openvino"]
    assert "not tried: planted reason" in rows["fused"]


# ---------------------------------------------------------------- shared turns (fake clock: no CPU is timed)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedSession:
    """A session whose every run takes the next of ``ms`` (cycled) on ``clock``."""

    def __init__(self, clock: FakeClock, ms: list[float]):
        self.clock, self.ms, self.runs = clock, ms, 0

    def get_inputs(self) -> list[Any]:
        return [engines.Port("input_ids")]

    def get_outputs(self) -> list[Any]:
        return [engines.Port("out")]

    def run(self, names, feed):
        self.clock.now += self.ms[self.runs % len(self.ms)] / 1e3
        self.runs += 1
        return [np.zeros(1)]


def shared_turns(monkeypatch, parent_ms: float, torch_ms: float, contenders: dict[str, list[float]]):
    """gates.measure_speed on fake sessions: the parent, eager torch and ``contenders`` (name -> ms, cycled)."""
    clock = FakeClock()
    timed = {"parent": TimedSession(clock, [parent_ms])} | {n: TimedSession(clock, ms) for n, ms in contenders.items()}
    monkeypatch.setattr(gates, "session", lambda path, providers=None, threads=None, engine=None: timed[path.name])
    torch = TimedSession(clock, [torch_ms])
    shapes = {"8x128": {"input_ids": np.ones((8, 128), dtype=np.int64)}}
    figures = REAL_MEASURE_SPEED(Path("parent"), [(Path(n), None) for n in contenders], shapes,
                                 torch_call=lambda feed: lambda: torch.run(None, feed), clock=clock)
    return dict(zip(contenders, figures)), timed, torch


def test_shared_turns_time_parent_and_torch_once_and_refuse_the_slower_candidates(monkeypatch):
    figures, timed, torch = shared_turns(monkeypatch, 10.0, 8.0, {"fast": [5.0], "slow": [12.0], "torch-slow": [9.0]})
    verdicts = {name: {c.name: c.passed for c in gates.speed_checks(f)} for name, f in figures.items()}
    assert verdicts["fast"] == {"speed at 8x128": True, "speed vs torch fp32 eager at 8x128": True}
    assert verdicts["slow"] == {"speed at 8x128": False, "speed vs torch fp32 eager at 8x128": False}
    assert verdicts["torch-slow"] == {"speed at 8x128": True, "speed vs torch fp32 eager at 8x128": False}
    fast = figures["fast"][0]
    assert (fast.parent_ms, fast.optimized_ms, fast.torch_ms) == pytest.approx((10.0, 5.0, 8.0))
    # every decision is clear at once: the fewest turns, and one parent and one torch call per turn for all three
    assert fast.turns == gates.MIN_TURNS and timed["parent"].runs == torch.runs == gates.MIN_TURNS + 1


def test_shared_turns_go_on_while_a_decision_is_close_and_stop_at_the_budget(monkeypatch):
    monkeypatch.setattr(gates, "SPEED_BUDGET_S", 0.5)
    # 9.5 ms or 10 ms against the parent's 10.2: the ratio straddles MIN_SPEEDUP (1.07x and 1.02x), turn by turn
    figures, timed, _ = shared_turns(monkeypatch, 10.2, 20.0, {"close": [9.5, 10.0]})
    spent_ms = 1e3 * timed["parent"].clock.now - (10.2 + 20.0 + 9.5)  # less the warm-up turn
    assert figures["close"][0].turns > gates.MIN_TURNS
    assert 3 * 500 <= spent_ms < 3 * 500 + 40.2  # 3 calls x SPEED_BUDGET_S, then the turn under way ends


# ---------------------------------------------------------------- auto: what it skips, and why


def judged(level: str, passed: bool, engine: Engine = Engine()) -> Any:
    from exporters.optimize import Candidate
    from zoo.checks import Check

    return Candidate(level, Path(f"{level}.onnx"), {"quantization": None}, engine,
                     [Check("parent: min cosine", passed, "0.999", ">= 0.99")])


def fake_race(monkeypatch, speedups: dict[str, float], races: list[list[str]]) -> None:
    """optimize._race stand-in: each contender at its given speed-up over a 10 ms parent (and torch at 20 ms)."""
    from exporters import optimize

    def race(ctx, contenders):
        races.append([c.level for c in contenders])
        for c in contenders:
            c.speed = [gates.SpeedFigure("8x128", 10.0, 10.0 / speedups[c.level], 20.0)]

    monkeypatch.setattr(optimize, "_race", race)


@pytest.mark.parametrize("bound, searched", [(1.5, False), (3.0, True), (1.02, False)])
def test_a_search_runs_only_where_its_fastest_step_could_win(monkeypatch, bound, searched):
    """int8 with nothing kept in fp32 failed accuracy; the ladder runs only if that graph beats the rival (2x)
    and passes the speed gate itself (1.02x does not)."""
    from exporters.optimize import _bound_beaten

    races: list[list[str]] = []
    fake_race(monkeypatch, {"bf16": 2.0, "int8": bound}, races)
    rival, first = judged("bf16", True), judged("int8", False)
    beaten = _bound_beaten(None, first, [rival])
    assert races == [["bf16", "int8"]] and (beaten is None) == searched
    if not searched:
        assert not beaten.passed and beaten.value == f"{bound:.2f}x the parent"
        assert ("faster than bf16 (2.00x)" if bound > 1.05 else "speed at 8x128 >= 1.05x") in beaten.limit
    assert _bound_beaten(None, first, []) is None and len(races) == 1  # a level asked for alone: always searched


def test_auto_skips_openvino_f32_where_bf16_passed_and_times_everything_in_one_race(monkeypatch):
    from types import SimpleNamespace

    from exporters import optimize

    attempted: list[str] = []

    def attempt(ctx, level, rivals):
        attempted.append(level)
        return judged(level, bf16_passes or level != "bf16", optimize.ENGINE_LEVELS.get(level, Engine()))

    races: list[list[str]] = []
    fake_race(monkeypatch, {"bf16": 3.0, "openvino": 1.2, "int8": 0.9}, races)
    monkeypatch.setattr(optimize, "_attempt", attempt)
    ctx = SimpleNamespace(task=SimpleNamespace(generates=False))
    for bf16_passes in (True, False):
        attempted.clear(), races.clear()
        tried = {c.level: c for c in optimize._attempt_all(ctx, ["bf16", "openvino", "int8"])}
        assert attempted == (["bf16", "int8"] if bf16_passes else ["bf16", "openvino", "int8"])
        assert races == [["bf16", "int8"] if bf16_passes else ["openvino", "int8"]]
        failed = [c.name for c in tried["int8"].checks if not c.passed]
        assert failed == ["speed at 8x128"]  # 0.9x the parent: refused after the shared race
        skipped = tried["openvino"].checks[0]
        assert (skipped.name == "not tried") == bf16_passes and tried["bf16"].passed == bf16_passes
        assert ("skipped" in tried["openvino"].summary()) == bf16_passes


def test_auto_skips_the_int8_search_its_fastest_graph_cannot_win(text_cls_artifact, tmp_path, monkeypatch):
    """Planted: int8 with nothing kept in fp32 loses accuracy; timed in one race with OpenVINO (both 2x the parent),
    it cannot be faster, so MatMuls are never ranked for the rest of the ladder, and OpenVINO is kept."""
    from exporters import optimize, quantize
    from zoo.checks import Check

    accuracy = optimize._accuracy_checks

    def all_int8_loses(ctx, candidate):
        lossy = candidate.level == "int8" and not candidate.recipe["quantization"]["kept_fp32"]
        return accuracy(ctx, candidate) + [Check("planted: min cosine", not lossy, "0.9", ">= 0.99")]

    def never(*args, **kwargs):
        raise AssertionError("the ladder was ranked")

    fake_cpu(monkeypatch, WITHOUT_BF16)
    monkeypatch.setattr(optimize, "_accuracy_checks", all_int8_loses)
    monkeypatch.setattr(quantize, "rank_by_error", never)
    result = optimize.optimize(text_cls_artifact, out=tmp_path / "auto", level="auto")
    tried = {t["level"]: t for t in result.tried}
    assert result.level == "openvino" and list(tried) == ["openvino", "int8"]
    assert tried["int8"]["failed"][0] == ("speed with nothing kept in fp32 (its fastest): 2.00x the parent "
                                          "(limit faster than openvino (2.00x), which passed every gate)")
    assert "planted: min cosine: 0.9 (limit >= 0.99)" in tried["int8"]["failed"] and tried["int8"]["speed"]
