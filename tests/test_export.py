"""export_onnx on the tiny text classifier and the tiny timm model: the artifact and its manifest.

    .venv/bin/pytest tests/test_export.py -n 2
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ConfigError, ModelUnavailableError

# one worker builds the module's artifacts once (make test runs --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export-artifacts")]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_text_artifact_has_documented_layout(text_cls_artifact: Path) -> None:
    import onnx

    m = _manifest(text_cls_artifact)
    documented = {"format", "format_version", "name", "spec", "source", "task", "labels", "inputs", "outputs",
                  "opset", "exporter", "preprocess", "versions", "files", "verification", "tolerances", "created"}
    assert documented <= set(m)
    assert m["exporter"] == "dynamo" and m["opset"] == 18 and m["verified"] is True
    assert m["labels"] == ["negative", "positive"] and m["task"] == "text-classification"
    graph = onnx.load(str(text_cls_artifact / "model.onnx")).graph
    assert [i["name"] for i in m["inputs"]] == [i.name for i in graph.input]
    assert [o["name"] for o in m["outputs"]] == ["logits"]
    assert m["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    pp = m["preprocess"]
    assert pp["max_length"] == 512 and pp["truncation"] is True
    assert (pp["pad_token"], pp["pad_token_id"], pp["padding_side"]) == ("[PAD]", 0, "right")
    assert "tokenizer.json" in pp["files"] and (text_cls_artifact / "tokenizer.json").is_file()
    assert set(m["files"]) == {p.relative_to(text_cls_artifact).as_posix() for p in text_cls_artifact.rglob("*")
                               if p.is_file() and p.name != "manifest.json"}
    assert all(m["versions"][k] for k in ("torch", "transformers", "onnx", "onnxruntime", "zoo"))
    report = m["verification"]
    assert report["passed"] and len(report["seeds"]) >= 3


def test_golden_data_replays_with_plain_onnx_and_onnxruntime(text_cls_artifact: Path) -> None:
    """ONNX Model Zoo layout: any tool reads the TensorProtos, no zoo involved."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    sets = sorted(text_cls_artifact.glob("test_data_set_*"))
    assert [s.name for s in sets] == ["test_data_set_0", "test_data_set_1", "test_data_set_2"]
    session = ort.InferenceSession(str(text_cls_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    batches = set()
    for data_set in sets:
        feed = {}
        for k, graph_input in enumerate(session.get_inputs()):
            proto = onnx.load_tensor(str(data_set / f"input_{k}.pb"))
            assert proto.name == graph_input.name
            feed[proto.name] = numpy_helper.to_array(proto)
        expected = numpy_helper.to_array(onnx.load_tensor(str(data_set / "output_0.pb")))
        got = session.run(None, feed)[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
        batches.add(feed["input_ids"].shape)
    assert len(batches) == 3, "golden sets should cover different shapes"


def test_verification_grid_differs_from_export_shapes(text_cls_artifact: Path, timm_artifact: Path) -> None:
    from zoo.tasks._text import EXPORT_BATCH

    for folder in (text_cls_artifact, timm_artifact):
        report = _manifest(folder)["verification"]
        batches = {int(s.split("[")[1].split("x")[0]) for s in report["shapes"]}
        assert 1 in batches and any(b >= 3 and b % 2 for b in batches) and EXPORT_BATCH not in batches
        assert len(report["seeds"]) >= 3
    text_shapes = _manifest(text_cls_artifact)["verification"]["shapes"]
    assert any(s.startswith("long [3x512]") for s in text_shapes), text_shapes
    assert any(s.startswith("short [1x") for s in text_shapes)


def test_large_images_verify_at_a_smaller_batch() -> None:
    """SAM at 1024 px: batch 3 alone needs over 7 GiB in onnxruntime; the grid stops at 2 there, and still
    holds batch 1 so a graph fixed at the export batch fails. Ordinary sizes keep 1 and 3."""
    from zoo.spec import Preprocess
    from zoo.tasks._image import EXPORT_BATCH, grid_batches

    assert grid_batches(Preprocess(input_size=(3, 224, 224))) == (1, 3)
    assert grid_batches(Preprocess(input_size=(3, 768, 768))) == (1, 3)
    large = grid_batches(Preprocess(input_size=(3, 1024, 1024)))
    assert large == (1, 2) and 1 in large and EXPORT_BATCH != 1


def test_image_artifact_records_timm_preprocessing(timm_artifact: Path) -> None:
    m = _manifest(timm_artifact)
    pp = m["preprocess"]
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"):
        assert pp[key] is not None, key
    assert pp["files"] == ["preprocess.json"]
    assert json.loads((timm_artifact / "preprocess.json").read_text())["input_size"] == pp["input_size"]
    assert m["labels"] == ["cat", "dog", "bird"]
    assert m["inputs"][0]["shape"] == ["batch", *pp["input_size"]]


def test_verify_artifact_accepts_fresh_artifacts_and_source(text_cls_artifact: Path, timm_artifact: Path) -> None:
    from exporters.verify import verify_artifact

    report = verify_artifact(text_cls_artifact)
    assert report.passed and sum(c.name.startswith("golden") for c in report.checks) == 3
    full = verify_artifact(timm_artifact, against_source=True)
    assert any(c.name == "source: output logits" and c.passed for c in full.checks)


def test_torchscript_fallback_is_used_and_recorded(tiny_timm_folder, tmp_path, monkeypatch) -> None:
    import exporters.onnx as onnx_exporter

    def broken_dynamo(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted dynamo failure")

    monkeypatch.setattr(onnx_exporter, "_export_dynamo", broken_dynamo)
    result = onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "a")
    assert result.exporter == "torchscript" and result.report.passed
    assert "planted dynamo failure" in result.manifest.export_notes[0]


def test_both_exporters_failing_is_an_export_error(tiny_timm_folder, tmp_path, monkeypatch) -> None:
    import exporters.onnx as onnx_exporter
    from zoo.errors import ExportError

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted failure")

    monkeypatch.setattr(onnx_exporter, "_export_dynamo", broken)
    monkeypatch.setattr(onnx_exporter, "_export_torchscript", broken)
    with pytest.raises(ExportError, match="both ONNX exporters failed"):
        onnx_exporter.export_onnx(str(tiny_timm_folder), out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_run_dir_export_records_the_run(tiny_text_classifier, tmp_path) -> None:
    from exporters.onnx import export_onnx
    from zoo.resolver import resolve

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_text_classifier, run_dir / "model")
    spec = resolve(str(run_dir / "model"))
    run = {"spec": spec.to_dict(), "model_dir": "model", "base": "bert-base",
           "data": {"fingerprint": "abc123"}, "config": {"epochs": 1}, "metrics": {"accuracy": 0.5}}
    (run_dir / "run.json").write_text(json.dumps(run))
    result = export_onnx(str(run_dir), out=tmp_path / "art")
    recorded = result.manifest.run
    assert recorded["base"] == "bert-base" and recorded["metrics"] == {"accuracy": 0.5}
    assert recorded["data"]["fingerprint"] == "abc123" and recorded["config"] == {"epochs": 1}
    assert result.manifest.spec["origin"] == "run"


def test_default_destination_is_artifacts_safe_name(tiny_timm_folder, tmp_path, monkeypatch) -> None:
    from exporters.onnx import export_onnx, safe_name

    assert safe_name("hf:org/model@v1") == "hf-org-model-v1"
    monkeypatch.chdir(tmp_path)
    result = export_onnx(str(tiny_timm_folder))
    assert result.path == (tmp_path / "artifacts" / Path(tiny_timm_folder).name).resolve()


def test_bad_settings_fail_before_any_work(tiny_timm_folder, tmp_path, text_cls_artifact) -> None:
    from exporters.onnx import export_onnx

    with pytest.raises(ConfigError) as info:
        export_onnx(str(tiny_timm_folder), out=tmp_path / "a", opset=3, atol=-1.0, rtol=float("nan"))
    message = str(info.value)
    assert "--opset 3" in message and "--atol -1.0" in message and "--rtol nan" in message
    with pytest.raises(ConfigError, match="already a zoo artifact"):
        export_onnx(str(text_cls_artifact), out=tmp_path / "b")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        export_onnx(str(tiny_timm_folder), out=text_cls_artifact)


def test_text_model_without_tokenizer_is_refused(tiny_text_classifier, tmp_path) -> None:
    """Missing preprocessor file at the source: a clear error and nothing at the destination."""
    from exporters.onnx import export_onnx

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_text_classifier, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelUnavailableError, match="no tokenizer files"):
        export_onnx(str(folder), out=tmp_path / "art")
    assert not (tmp_path / "art").exists()
