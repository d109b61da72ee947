"""``zoo triton``: the repository entry's config.pbtxt must parse into Triton's own ModelConfig protobuf."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import zoo
from tests.serving import ROOT, SERVING_STACK, TRAINING_STACK, zoo_command
from zoo.errors import ConfigError
from zoo.serve.triton import write_model_repository


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    # text_format.Parse refuses unknown fields and bad enum values: the same check Triton makes on load
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_text_model_entry(minilm_artifact: Path, tmp_path: Path) -> None:
    entry = write_model_repository(minilm_artifact, tmp_path / "repo", name="minilm", max_batch_size=16,
                                   max_queue_delay_us=2000)
    config = parse_config(entry.path / "config.pbtxt")
    assert config.name == "minilm" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    int64 = model_config_pb2.DataType.Value("TYPE_INT64")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", int64, [-1]), ("attention_mask", int64, [-1]), ("token_type_ids", int64, [-1])]
    (output,) = config.output
    assert output.name == "embeddings" and list(output.dims) == [384]
    assert output.data_type == model_config_pb2.DataType.Value("TYPE_FP32") and not output.label_filename
    assert (entry.path / "1" / "model.onnx").read_bytes() == (minilm_artifact / "model.onnx").read_bytes()


def test_classifier_entry_carries_its_labels(timm_artifact: Path, tmp_path: Path) -> None:
    entry = write_model_repository(timm_artifact, tmp_path / "repo")
    config = parse_config(entry.path / "config.pbtxt")
    assert entry.name == timm_artifact.name and config.max_batch_size == 32
    (output,) = config.output
    assert output.label_filename == "labels.txt"
    assert (entry.path / "labels.txt").read_text().split() == list(zoo.load(timm_artifact).labels)
    assert list(config.input[0].dims) == zoo.load(timm_artifact).info["inputs"][0]["shape"][1:]


def test_batching_off_keeps_the_batch_axis_in_the_dims(timm_artifact: Path, tmp_path: Path) -> None:
    entry = write_model_repository(timm_artifact, tmp_path / "repo", max_batch_size=0)
    config = parse_config(entry.path / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims)[0] == -1 and len(config.input[0].dims) == 4


def test_a_wrong_config_would_not_parse(minilm_artifact: Path, tmp_path: Path) -> None:
    # the twin of the parses above: Triton's message refuses what it does not know
    entry = write_model_repository(minilm_artifact, tmp_path / "repo")
    broken = entry.path / "config.pbtxt"
    broken.write_text(broken.read_text().replace("TYPE_INT64", "TYPE_LONG", 1))
    with pytest.raises(text_format.ParseError):
        parse_config(broken)


def test_an_existing_entry_is_never_merged_into(minilm_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "repo" / "minilm").mkdir(parents=True)
    (tmp_path / "repo" / "minilm" / "config.pbtxt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        write_model_repository(minilm_artifact, tmp_path / "repo", name="minilm")
    assert (tmp_path / "repo" / "minilm" / "config.pbtxt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["minilm"]


def test_zoo_triton_cli_runs_on_the_core_install(timm_artifact: Path, tmp_path: Path) -> None:
    # neither torch nor the serving extra: zoo triton only reads the artifact and writes files
    done = subprocess.run(zoo_command("triton", str(timm_artifact), str(tmp_path / "repo"), "--name", "digits",
                                      "--max-wait-ms", "1.5", blocked=TRAINING_STACK + SERVING_STACK),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "tritonserver --model-repository" in done.stdout
    config = parse_config(tmp_path / "repo" / "digits" / "config.pbtxt")
    assert config.name == "digits" and config.dynamic_batching.max_queue_delay_microseconds == 1500
    again = subprocess.run(zoo_command("triton", str(timm_artifact), str(tmp_path / "repo"), "--name", "digits"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr
