"""zoo finetune end to end: run dirs, resume, early stopping, launch failures and every CLI error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_data import ROWS, image_folder, write_rows
from zoo.errors import LaunchError


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("imgs") / "data", per_label=6)


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("text") / "train.csv", ROWS * 2, "csv")


def small_image_run(model: Path, data: Path, out: Path, **options) -> Path:
    from zoo.train.finetune import finetune

    settings = dict(batch_size=6, lr=1e-2, image_size=24, progress=False, max_steps=6, checkpoint_every=2)
    return finetune(str(model), str(data), out=out, **{**settings, **options})


def assert_run_dir(run: Path, labels: list[str], world_size: int, strategy: str) -> dict:
    from zoo.resolve import resolve

    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == world_size and record["strategy"] == strategy
    assert record["spec"]["labels"] == labels and record["spec"]["origin"] == "run"
    assert record["data"]["labels"] == labels and len(record["data"]["fingerprint"]) == 64
    assert {"val_loss", "val_accuracy"} <= set(record["metrics"]["final"])
    assert "torch" in record["versions"] and record["config"]["strategy"] == strategy
    assert (run / "curves.png").stat().st_size > 1000 and (run / "metrics.jsonl").is_file()
    spec = resolve(str(run))
    assert spec.origin == "run" and spec.local_path == str((run / "model").resolve())
    assert list(spec.labels) == labels
    return record


# ---------------------------------------------------------------- distributed, end to end


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_timm_run_dir_loads_in_timm_and_exports(tiny_timm_folder, images, tmp_path):
    import timm
    import torch

    run = small_image_run(tiny_timm_folder, images, tmp_path / "run", strategy="ddp", nproc=2)
    assert_run_dir(run, ["bird", "cat", "dog"], 2, "ddp")
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["label_names"] == ["bird", "cat", "dog"] and config["num_classes"] == 3
    model = timm.create_model(f"local-dir:{run / 'model'}").eval()  # a timm user loads it directly
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 3)
    exporters = pytest.importorskip("exporters.onnx")
    result = exporters.export_onnx(str(run), out=tmp_path / "artifact")
    assert result.report.passed and result.manifest.spec["labels"] == ["bird", "cat", "dog"]


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_text_paused_then_resumed_in_one_process(tiny_text_classifier, text_csv, tmp_path):
    """2 DDP processes stop after a checkpoint; one process finishes the run (DCP reshards)."""
    import transformers

    from zoo.train.finetune import finetune

    options = dict(batch_size=8, max_steps=4, checkpoint_every=2, eval_every=2, progress=False)
    run = tmp_path / "run"
    finetune(str(tiny_text_classifier), str(text_csv), out=run, strategy="ddp", nproc=2, pause_at=2, **options)
    assert (run / "checkpoints" / "step_2" / "COMPLETE").is_file() and not (run / "run.json").exists()
    finetune(str(tiny_text_classifier), str(text_csv), out=run, resume=True, **options)
    record = assert_run_dir(run, ["negative", "positive"], 1, "single")
    assert record["steps"] == 4
    steps = [line["step"] for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "val_loss" in line]
    assert steps == [2, 4]  # the resumed run appended after the paused one, no duplicates
    model = transformers.AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (run / "model" / "tokenizer.json").is_file()


@pytest.mark.distributed
@pytest.mark.slow
def test_failing_worker_is_one_launch_error_naming_the_rank(tmp_path):
    """Workers that fail after the launch (here: data gone between the check and the run)."""
    from zoo.train.config import TrainConfig
    from zoo.train.launch import spawn

    config = TrainConfig(model="timm:test_resnet", data="./gone.csv", out=str(tmp_path / "run"),
                         strategy="ddp", nproc=2, random_init=True, progress=False)
    with pytest.raises(LaunchError, match=r"^worker rank [01] of 2 failed: DataError: data file './gone.csv' "
                                          "does not exist"):
        spawn(config)


# ---------------------------------------------------------------- one process: resume, early stopping


@pytest.fixture(scope="session")
def straight_run(tiny_timm_folder, images, tmp_path_factory) -> Path:
    return small_image_run(tiny_timm_folder, images, tmp_path_factory.mktemp("straight") / "run")


def test_resume_ends_with_the_same_weights(tiny_timm_folder, images, straight_run, tmp_path):
    run = tmp_path / "run"
    small_image_run(tiny_timm_folder, images, run, pause_at=4)
    assert not (run / "model").exists()
    # a checkpoint cut off mid-write: newer, but without its completion marker
    cut = run / "checkpoints" / "step_5"
    cut.mkdir()
    (cut / "__0_0.distcp").write_bytes((run / "checkpoints" / "step_4" / "__0_0.distcp").read_bytes()[:100])
    small_image_run(tiny_timm_folder, images, run, resume=True)
    a, b = tensors(straight_run), tensors(run)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert json.loads((run / "run.json").read_text())["steps"] == 6


def test_resume_equality_check_sees_a_different_run(tiny_timm_folder, images, straight_run, tmp_path):
    """Twin of the resume test: another seed ends elsewhere, so equality means something."""
    run = small_image_run(tiny_timm_folder, images, tmp_path / "run", seed=1)
    a, b = tensors(straight_run), tensors(run)
    assert any(not bool((a[k] == b[k]).all()) for k in a)


def test_checkpoint_without_marker_is_never_chosen(tmp_path):
    from zoo.errors import ConfigError
    from zoo.train.checkpoint import MARKER, TRAINER_FILE, latest_checkpoint

    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / TRAINER_FILE).write_text("{}")
        if complete:
            (folder / MARKER).write_text("ok")
    assert latest_checkpoint(tmp_path).name == "step_2"
    (tmp_path / "checkpoints" / "step_4" / MARKER).write_text("ok")  # the twin: once marked, it is chosen
    assert latest_checkpoint(tmp_path).name == "step_4"
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_timm_folder, images, tmp_path):
    # a learning rate far too high makes the validation loss worse quickly
    stopped = small_image_run(tiny_timm_folder, images, tmp_path / "a", lr=5.0, max_steps=12, eval_every=1,
                              early_stopping=1, checkpoint_every=None)
    record = json.loads((stopped / "run.json").read_text())
    assert record["stopped_early"] and record["steps"] < 12
    full = small_image_run(tiny_timm_folder, images, tmp_path / "b", lr=5.0, max_steps=12, eval_every=1,
                           checkpoint_every=None)
    assert json.loads((full / "run.json").read_text())["steps"] == 12


def test_token_classification_run_reports_f1(registry, tmp_path):
    import dataclasses

    from tests.tiny import tiny_hf_folder

    folder = tiny_hf_folder(dataclasses.replace(registry.get("bert-base"), task="token-classification"),
                            tmp_path / "ner-model")
    rows = [{"tokens": ["Anna", "lives", "in", "Bern"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["Bob", "left", "Basel"], "ner_tags": ["B-PER", "O", "B-LOC"]}] * 6
    data = write_rows(tmp_path / "ner.jsonl", rows, "jsonl")
    from zoo.train.finetune import finetune

    run = finetune(str(folder), str(data), out=tmp_path / "run", batch_size=4, max_steps=3, progress=False)
    record = json.loads((run / "run.json").read_text())
    assert record["spec"]["task"] == "token-classification" and record["spec"]["labels"] == ["B-LOC", "B-PER", "O"]
    assert 0.0 <= record["metrics"]["final"]["val_f1"] <= 1.0


# ---------------------------------------------------------------- every error: one line, exit 1, nothing written


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code), capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing", "data file './missing.csv' does not exist"),
    ("column", "--label-column stars: no such column"),
    ("labels", "1 distinct label"),
    ("empty", "is empty"),
    ("nproc", "--nproc 64 is more than the"),
    ("fp16", "fsdp refuses --precision fp16"),
    ("resume", "--resume: no complete checkpoint"),
    ("batch", "--batch-size 5 is the global batch and must divide evenly over 2 processes"),
])
def test_cli_errors(case, expected, tiny_text_classifier, text_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_label = write_rows(tmp_path / "one.csv", [{"text": "x", "label": "a"}] * 4, "csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    data = {"missing": "./missing.csv", "labels": str(one_label), "empty": str(empty)}.get(case, str(text_csv))
    extra = {"column": ["--label-column", "stars"], "nproc": ["--strategy", "ddp", "--nproc", "64"],
             "fp16": ["--strategy", "fsdp", "--nproc", "2", "--precision", "fp16"], "resume": ["--resume"],
             "batch": ["--strategy", "ddp", "--nproc", "2", "--batch-size", "5"]}.get(case, [])
    out = tmp_path / "run"
    code, err = run_cli(["finetune", str(tiny_text_classifier), "--data", data, "--out", str(out), *extra], capsys)
    assert code == 1 and err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_success_prints_validation_metrics(tiny_text_classifier, text_csv, tmp_path, capsys):
    """The twin of the error cases: the same command with good inputs trains and reports."""
    code, _ = run_cli(["finetune", str(tiny_text_classifier), "--data", str(text_csv), "--out",
                       str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8"], capsys)
    assert code == 0
    assert "validation (final, step 2): loss" in capsys.readouterr().out or (tmp_path / "run" / "run.json").is_file()
