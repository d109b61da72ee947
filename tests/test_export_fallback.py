"""What the exporter tries before giving up, random init that repeats, and random init from a config alone.

    .venv/bin/pytest tests/test_export_fallback.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.errors import VerificationError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("export-fallback")


def _dangling_graph(path: Path, *_args: Any) -> None:
    """What torch.onnx wrote for gemma4_vit_167m: a node reading a tensor nothing produces."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["pixel_values", "mul_113_min_1"], ["logits"])
    graph = helper.make_graph([node], "dangling",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.slow
def test_a_graph_onnxruntime_cannot_load_falls_back_to_torchscript(tiny_timm_folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.onnx as onnx_exporter

    monkeypatch.setattr(onnx_exporter, "_export_dynamo",
                        lambda module, spec, tensors, path, *_: _dangling_graph(path))
    result = onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "art")
    notes = " | ".join(result.manifest.export_notes)
    assert result.exporter == "torchscript" and result.report.passed
    assert "dynamo graph at onnxruntime optimisation 'all' failed: onnx.checker" in notes
    assert "onnxruntime loads the graph refused" in notes and "mul_113_min_1" in notes
    assert "'basic'" not in notes.split("kept")[0], "a lower level cannot mend a broken graph: not tried"
    assert notes.endswith("kept the torchscript graph, verified at onnxruntime optimisation 'all'")


@pytest.mark.slow
def test_two_unloadable_graphs_are_one_verification_error(tiny_timm_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin: when the fallback is broken too, the user gets the report, not onnxruntime's traceback."""
    import exporters.onnx as onnx_exporter

    for name in ("_export_dynamo", "_export_torchscript"):
        monkeypatch.setattr(onnx_exporter, name, lambda module, spec, tensors, path, *_: _dangling_graph(path))
    with pytest.raises(VerificationError) as info:
        onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "art")
    message = str(info.value)
    assert "Tried: dynamo graph at onnxruntime optimisation 'all' failed" in message
    assert "torchscript graph at onnxruntime optimisation 'all' failed" in message
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_a_refused_graph_survives_a_fallback_that_cannot_export(tiny_timm_folder: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """gemma4_vit_167m: the dynamo graph is refused and the TorchScript exporter has no aten::rms_norm at
    opset 18. The user gets both reasons in one error and --keep-failed keeps the refused graph (it
    used to end in FileNotFoundError: the fallback had deleted model.onnx before failing)."""
    import exporters.onnx as onnx_exporter

    def no_rms_norm(*_args: Any) -> None:
        raise RuntimeError("Exporting the operator 'aten::rms_norm' to ONNX opset version 18 is not supported")

    monkeypatch.setattr(onnx_exporter, "_export_dynamo",
                        lambda module, spec, tensors, path, *_: _dangling_graph(path))
    monkeypatch.setattr(onnx_exporter, "_export_torchscript", no_rms_norm)
    kept = tmp_path / "kept"
    with pytest.raises(VerificationError) as info:
        onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "art", keep_failed=kept)
    message = str(info.value)
    assert "dynamo graph at onnxruntime optimisation 'all' failed" in message
    assert "torchscript exporter failed: RuntimeError: Exporting the operator 'aten::rms_norm'" in message
    assert not (tmp_path / "art").exists()
    assert sorted(p.name for p in kept.iterdir() if p.name.startswith(("model", ".refused"))) == ["model.onnx"]
    import onnx

    assert onnx.load(str(kept / "model.onnx")).graph.node[0].input[1] == "mul_113_min_1"


class _DriftingSession:
    """An onnxruntime session whose outputs drift by 0.05: a fusion that breaks the numbers."""

    def __init__(self, session: Any):
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, names: Any, feed: Any) -> list[np.ndarray]:
        return [out + np.float32(0.05) for out in self._session.run(names, feed)]


@pytest.mark.slow
def test_a_lower_onnxruntime_level_is_kept_when_fusions_drift(tiny_timm_folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    import exporters.verify as verify
    import zoo
    from exporters.onnx import export_onnx

    real = verify.ort_session

    def drifting(path: Path, optimization: str = "all", **kwargs: Any) -> Any:
        session = real(path, optimization, **kwargs)
        return _DriftingSession(session) if optimization == "all" else session

    monkeypatch.setattr(verify, "ort_session", drifting)
    result = export_onnx(str(tiny_timm_folder), out=tmp_path / "art")
    notes = " | ".join(result.manifest.export_notes)
    assert result.exporter == "dynamo" and result.manifest.spec["export"]["ort_optimization"] == "basic"
    assert "dynamo graph at onnxruntime optimisation 'all' failed: output logits max abs 0.05" in notes
    assert notes.endswith("kept the dynamo graph, verified at onnxruntime optimisation 'basic'")
    monkeypatch.setattr(verify, "ort_session", real)
    assert verify.verify_artifact(result.path).passed, "golden data replays at the recorded level"
    options = zoo.load(result.path)._session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


# ---------------------------------------------------------------- seeded random init


def test_random_init_is_seeded_and_leaves_the_callers_random_state() -> None:
    import torch

    from exporters.source import build_source
    from zoo.resolver import resolve

    spec = resolve("timm:test_resnet")

    def weights(seed: int) -> list[torch.Tensor]:
        module = build_source(spec, random_init=True, seed=seed, seeds=(0,)).module
        return [p.detach().clone() for p in module.parameters()]

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again, other = weights(0), weights(0), weights(1)
    assert torch.equal(torch.rand(1), expected_next), "building the model changed the caller's random state"
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    seeded = build_source(spec, random_init=True, seed=5, seeds=(0,))
    assert seeded.seed == 5
    # a module handed in brings its own weights: no seed is claimed for them
    assert build_source(seeded.spec, random_init=True, module=seeded.module, seeds=(0,)).seed is None


@pytest.mark.slow
def test_seed_is_recorded_and_against_source_rebuilds_the_same_weights(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "zoo", "export", "timm:test_resnet", "--random-init", "--seed", "7",
                           "--out", str(tmp_path / "art")], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "zoo export: build model (random weights, seed 7)" in done.stderr, "stages are printed when piped"
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["random_init"] is True
    assert manifest["tolerances"]["rule"] == "row-scale"
    from exporters.verify import verify_artifact

    report = verify_artifact(tmp_path / "art", against_source=True)
    source_check = next(c for c in report.checks if c.name == "source: output logits")
    golden_check = next(c for c in report.checks if c.name == "golden test_data_set_0")
    # the rebuilt weights are the exported ones: the graph matches them as closely as its golden data
    assert source_check.passed and float(source_check.value.split(",")[0].split()[-1]) < 1e-5
    assert golden_check.passed


# ---------------------------------------------------------------- hf: random init needs only the config


def _cache_config_only(cache: Path, minilm_dir: Path) -> None:
    """all-MiniLM-L6-v2 in a hub cache with its config (shrunk) and tokenizer files, but no weights."""
    from tests import tiny

    snapshot = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("b" * 40)
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, **tiny.HF_TINY["bert"]}
    (snapshot / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir / name).is_file():
            shutil.copy(minilm_dir / name, snapshot / name)


def _zoo(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env=env)


@pytest.mark.slow
def test_hf_random_init_works_from_a_cached_config(minilm_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _cache_config_only(cache, minilm_dir)
    done = _zoo("export", "minilm-l6", "--onnx", "--random-init", "--out", str(tmp_path / "art"), cache=cache)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["random_init"] is True
    # without --random-init the weights are what is missing, and the message says --random-init helps
    done = _zoo("export", "minilm-l6", "--onnx", "--out", str(tmp_path / "art2"), cache=cache)
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(error) == 1 and "--random-init" in error[0] and "weights" in error[0]


def test_hf_offline_message_names_random_init_only_with_what_it_needs(tmp_path: Path) -> None:
    done = _zoo("export", "minilm-l6", "--random-init", "--out", str(tmp_path / "art"), cache=tmp_path / "empty")
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(error) == 1, done.stderr
    assert "not in the local Hugging Face cache" in error[0]
    assert "For a smoke test with --random-init, its config and tokenizer files are enough" in error[0]
    assert "--include '*.json'" in error[0]


_SEEN: list[bool] = []  # whether autograd was recording, one entry per forward of the witness


class _GradWitness:
    """A module that records in _SEEN, on every forward, whether autograd was recording."""

    def __new__(cls) -> Any:
        import torch

        class Witness(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(4, 3)

            def forward(self, x: Any) -> Any:
                _SEEN.append(torch.is_grad_enabled())
                return self.linear(x)

        return Witness()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_exporters_trace_without_autograd(tmp_path: Path, exporter: str) -> None:
    """Autograd during a trace keeps every activation for a backward that never comes (SAM at 1024 px:
    over 14 GiB for the TorchScript trace, 5.2 GiB without). Both exporters must trace with it off."""
    import torch

    from exporters.onnx import export_with
    from zoo.spec import InputSpec, ModelSpec

    spec = ModelSpec(name="witness", source="timm", source_id="witness", task="image-classification",
                     inputs=(InputSpec("x", "float32", ("batch", 4)),), labels=("a", "b", "c"))
    module = _GradWitness()
    _SEEN.clear()
    assert torch.is_grad_enabled()
    module(torch.zeros(1, 4))
    assert _SEEN == [True], "the twin: an ordinary call records with autograd on"
    _SEEN.clear()
    export_with(exporter, module, spec, {"x": np.zeros((2, 4), np.float32)}, tmp_path / "m.onnx")
    assert _SEEN and not any(_SEEN), _SEEN
    assert (tmp_path / "m.onnx").is_file()
