"""``zoo bench``: latency percentiles per batch size, the torch comparison, and its clean failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import zoo
from zoo.cli.app import app
from zoo.errors import ConfigError
from zoo.runtime.bench import Timing, bench

runner = CliRunner()


def test_timing_percentiles() -> None:
    t = Timing.from_samples("onnxruntime", 4, [0.001] * 98 + [0.010, 0.020])
    assert t.p50_ms == pytest.approx(1.0) and t.p99_ms > 9.0 and t.throughput == pytest.approx(4000)


def test_bench_json(text_cls_artifact: Path) -> None:
    done = runner.invoke(app, ["bench", str(text_cls_artifact), "--batch-sizes", "1,3", "-n", "5", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert [(t["engine"], t["batch_size"]) for t in report["timings"]] == [("onnxruntime", 1), ("onnxruntime", 3)]
    assert all(0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"] for t in report["timings"])


def test_bench_vs_torch_table(timm_artifact: Path) -> None:
    done = runner.invoke(app, ["bench", str(timm_artifact), "--batch-sizes", "2", "-n", "3", "--vs-torch"])
    assert done.exit_code == 0, done.output
    assert "torch" in done.output and "onnxruntime" in done.output and "x" in done.output


def test_bench_vs_torch_uses_the_same_weights(timm_artifact: Path) -> None:
    report = bench(zoo.load(timm_artifact), batch_sizes=[2], iterations=2, vs_torch=True)
    assert report.speedup(2) is not None and report.speedup(2) > 0
    assert report.max_abs_diff[2] < 1e-3, "the rebuilt torch model is not the exported one"
    assert report.torch_note is not None and "weights from" in report.torch_note


def test_bench_vs_torch_without_torch(text_cls_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "zoo.runtime.torch_baseline", raising=False)
    with pytest.raises(ConfigError, match=r"--vs-torch needs PyTorch.*zoo-toolkit\[train\]"):
        bench(zoo.load(text_cls_artifact), batch_sizes=[1], iterations=1, vs_torch=True)


def test_bench_rejects_bad_batch_sizes(text_cls_artifact: Path) -> None:
    from zoo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", str(text_cls_artifact), "--batch-sizes", "1,x"])
    assert stop.value.code == 1


def test_bench_vs_torch_rebuilds_a_random_init_timm_model(tmp_path: Path) -> None:
    """No source folder (timm:ARCH, random weights): torch gets the same architecture, labelled as such."""
    from tests.artifacts import make_artifact

    art = make_artifact("timm:test_resnet", tmp_path / "art", random_init=True)
    model = zoo.load(art)
    assert model.predict(np.zeros((40, 50, 3), np.uint8), top_k=2).scores[0] > 0
    report = bench(model, batch_sizes=[1], iterations=2, vs_torch=True)
    assert report.torch_note is not None and "random weights" in report.torch_note
    assert report.speedup(1) is not None
