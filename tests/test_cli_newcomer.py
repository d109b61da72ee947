"""The CLI as a new user meets it (issue 14): each item reproduced, and shown fixed.

    .venv/bin/pytest tests/test_cli_newcomer.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zoo.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def zoo(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A real subprocess, stdout and stderr pipes (not a terminal), like `zoo ... | cat`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=full_env,
                          timeout=600, input=stdin, cwd=cwd or ROOT)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one 'error:' line and no traceback; returns that line."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1, done.stderr
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


# ---------------------------------------------------------------- names and labels


def test_alias_carries_the_labels_of_the_weights_it_names() -> None:
    from zoo.resolver import resolve

    alias, full = resolve("resnet50"), resolve("timm:resnet50.a1_in1k")
    assert alias.labels is not None and len(alias.labels) == 1000
    assert alias.labels == full.labels and alias.labels[0].startswith("tench")
    table = zoo("info", "resnet50")
    assert table.returncode == 0 and "1000: 'tench, Tinca tinca'" in table.stdout


def test_hf_alias_takes_its_labels_from_a_cached_config(tmp_path: Path) -> None:
    """distilbert-sst2's entry names no labels; the cached config.json does."""
    config = {"model_type": "distilbert", "architectures": ["DistilBertForSequenceClassification"],
              "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}
    _fake_hub_cache(tmp_path, "distilbert/distilbert-base-uncased-finetuned-sst-2-english", {"config.json": config})
    done = zoo("info", "distilbert-sst2", "--json", env={"HF_HUB_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"] == ["NEGATIVE", "POSITIVE"]
    bare = zoo("info", "distilbert-sst2", "--json", env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert json.loads(bare.stdout)["labels"] is None, "nothing cached: nothing invented"


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, object]) -> Path:
    """The layout huggingface_hub reads offline: models--ORG--NAME/{refs/main, snapshots/<sha>/...}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("a" * 40)
    for name, content in files.items():
        target = snapshot / name
        if isinstance(content, Path):
            shutil.copy(content, target)
        else:
            target.write_text(json.dumps(content))
    return snapshot


def test_misspelt_timm_name_suggests_the_close_one() -> None:
    line = one_error_line(zoo("info", "timm:resnet5O"))
    assert "Did you mean resnet50," in line


def test_bogus_timm_tag_is_one_line_listing_the_tags() -> None:
    line = one_error_line(zoo("info", "timm:resnet50.bogus_tag"))
    assert "timm model 'resnet50' has no pretrained tag 'bogus_tag'" in line and "a1_in1k" in line


def test_timm_description_has_no_class_count_a_finetune_would_contradict() -> None:
    from zoo.resolver import resolve
    from zoo.train.worker import run_spec

    spec = resolve("timm:test_resnet")
    assert "classes" not in spec.description
    tuned = run_spec(spec, tuple(str(i) for i in range(10)), Path("runs/digits"))
    assert "1000" not in tuned.description and len(tuned.labels) == 10


# ---------------------------------------------------------------- a runtime-only install

_WITHOUT_TORCH = """
import sys
for name in ("torch", "transformers", "timm", "torchvision"):
    sys.modules[name] = None  # any import of these now fails, as on a core-only install
from zoo.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("argv", [
    ["info", "timm:resnet18"],
    ["export", "timm:test_resnet", "--random-init"],
    ["finetune", "timm:test_resnet", "--data", "builtin:digits"],
    ["verify", "ARTIFACT", "--against-source"],
])
def test_commands_needing_torch_say_which_extra(argv: list[str], timm_artifact: Path, tmp_path: Path) -> None:
    argv = [str(timm_artifact) if a == "ARTIFACT" else a for a in argv]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *argv], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    line = one_error_line(done)
    assert f"'zoo {argv[0]}' needs" in line and "pip install 'zoo-toolkit[train]'" in line
    assert not (tmp_path / "artifacts").exists()


def test_the_runtime_commands_still_run_without_torch(timm_artifact: Path, image_file: Path) -> None:
    """The twin: the blocker leaves what the core install promises working."""
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "predict", str(timm_artifact), str(image_file),
                           "--json"], capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                                         "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- unverified artifacts


@pytest.fixture(scope="module")
def unverified_artifact(timm_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a good artifact whose manifest says verified: false, as --keep-failed leaves one."""
    from zoo.artifact import read_manifest, write_manifest

    folder = Path(shutil.copytree(timm_artifact, tmp_path_factory.mktemp("unverified") / "kept"))
    write_manifest(folder, read_manifest(folder).replace(verified=False))
    return folder


def test_load_refuses_an_unverified_artifact_unless_allowed(unverified_artifact: Path, timm_artifact: Path) -> None:
    import zoo
    from zoo.runtime.model import UnverifiedArtifactWarning

    with pytest.raises(zoo.ArtifactError, match="failed verification when it was exported.*allow_unverified=True"):
        zoo.load(unverified_artifact)
    with pytest.warns(UnverifiedArtifactWarning, match="loaded because allow_unverified was given"):
        model = zoo.load(unverified_artifact, allow_unverified=True)
    assert model.predict(np.zeros((20, 20, 3), np.uint8)).label
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the twin: a verified artifact loads with no warning
        zoo.load(timm_artifact)


def test_predict_refuses_an_unverified_artifact_unless_allowed(unverified_artifact: Path, image_file: Path) -> None:
    line = one_error_line(zoo("predict", str(unverified_artifact), str(image_file)))
    assert "--allow-unverified" in line
    done = zoo("predict", str(unverified_artifact), str(image_file), "--allow-unverified", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("warning: ") and "failed verification" in done.stderr
    assert json.loads(done.stdout)[0]["label"]


# ---------------------------------------------------------------- predict: many inputs


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory, image_file: Path) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    for name in ("a.jpg", "b.png", "nested/c.jpg"):
        from PIL import Image

        Image.open(image_file).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_expands_directories_globs_lists_and_stdin(timm_artifact: Path, image_dir: Path,
                                                          tmp_path: Path) -> None:
    def inputs(done: subprocess.CompletedProcess[str]) -> list[str]:
        assert done.returncode == 0, done.stderr
        return [row["input"] for row in json.loads(done.stdout)]

    everything = sorted(str(image_dir / n) for n in ("a.jpg", "b.png", "nested/c.jpg"))
    assert inputs(zoo("predict", str(timm_artifact), str(image_dir), "--json")) == everything
    assert inputs(zoo("predict", str(timm_artifact), f"{image_dir}/*.jpg", "--json")) == [str(image_dir / "a.jpg")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image_dir / 'b.png'}\n\n{image_dir / 'a.jpg'}\n")
    assert inputs(zoo("predict", str(timm_artifact), f"@{listing}", "--json")) == [str(image_dir / "b.png"),
                                                                                  str(image_dir / "a.jpg")]
    piped = zoo("predict", str(timm_artifact), "-", "--json", stdin=f"{image_dir / 'b.png'}\n")
    assert inputs(piped) == [str(image_dir / "b.png")]


def test_predict_input_errors_are_precise(timm_artifact: Path, image_dir: Path, tmp_path: Path) -> None:
    assert "pattern" in one_error_line(zoo("predict", str(timm_artifact), f"{image_dir}/*.gif"))
    assert "list file" in one_error_line(zoo("predict", str(timm_artifact), f"@{tmp_path}/missing.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no files this model reads" in one_error_line(zoo("predict", str(timm_artifact), str(empty)))


def test_text_arguments_are_never_expanded(text_cls_artifact: Path) -> None:
    """A text model takes '*' literally; '@' names a list file unless --text (issue 22) takes it as text."""
    done = zoo("predict", str(text_cls_artifact), "5 * great", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["input"] for r in json.loads(done.stdout)] == ["5 * great"]
    done = zoo("predict", str(text_cls_artifact), "--text", "5 * great", "@someone loved it", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["input"] for r in json.loads(done.stdout)] == ["5 * great", "@someone loved it"]


def test_predict_batch_size_and_out_files(text_cls_artifact: Path, tmp_path: Path) -> None:
    texts = [f"sentence number {i} was fine" for i in range(7)]
    listing = tmp_path / "texts.txt"
    listing.write_text("\n".join(texts) + "\n")
    jsonl, csv_file = tmp_path / "out" / "p.jsonl", tmp_path / "p.csv"
    done = zoo("predict", str(text_cls_artifact), f"@{listing}", "--batch-size", "3", "--out", str(jsonl), "-k", "2")
    assert done.returncode == 0 and f"wrote 7 predictions to {jsonl}" in done.stdout, done.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["input"] for r in rows] == texts and all(len(r["top_k"]) == 2 for r in rows)
    done = zoo("predict", str(text_cls_artifact), f"@{listing}", "--batch-size", "7", "--out", str(csv_file))
    assert done.returncode == 0, done.stderr
    import csv

    table = list(csv.DictReader(csv_file.open()))
    assert [r["input"] for r in table] == texts and [r["label"] for r in table] == [r["label"] for r in rows]
    assert "unknown result format '.json'" in one_error_line(
        zoo("predict", str(text_cls_artifact), "hi", "--out", str(tmp_path / "p.json")))


def test_progress_bar_shows_for_more_than_one_batch(text_cls_artifact: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import zoo as zoo_api
    from zoo.cli.runtime import _predict_all

    model = zoo_api.load(text_cls_artifact)
    terminal = Console(stderr=True, force_terminal=True, record=True, width=100)
    monkeypatch.setattr("rich.console.Console", lambda **_: terminal)  # as if stderr were a terminal
    seen: list[int] = []
    _predict_all(model, ["a", "b", "c"], 2, {}, lambda items, results: seen.append(len(results)))
    assert seen == [2, 1] and "3/3" in terminal.export_text()
    quiet = Console(stderr=True, force_terminal=True, record=True, width=100)
    monkeypatch.setattr("rich.console.Console", lambda **_: quiet)
    _predict_all(model, ["a", "b"], 2, {}, lambda items, results: None)  # one batch: no bar
    assert "2/2" not in quiet.export_text()


def test_provider_option_on_predict_and_bench(text_cls_artifact: Path) -> None:
    done = runner.invoke(app, ["predict", str(text_cls_artifact), "hi", "--provider", "cpu", "--json"])
    assert done.exit_code == 0, done.output
    bad = zoo("predict", str(text_cls_artifact), "hi", "--provider", "quantum")
    assert "execution provider 'quantum' is not in this onnxruntime build; available:" in one_error_line(bad)
    done = runner.invoke(app, ["bench", str(text_cls_artifact), "--provider", "CPUExecutionProvider",
                               "--batch-sizes", "1,3", "-n", "2", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["providers"] == ["CPUExecutionProvider"]
    # the sequence length each batch ran at: real sentences padded to the longest of the batch
    shapes = {int(k): v for k, v in report["input_shapes"].items()}
    assert shapes[1]["input_ids"][0] == 1 and shapes[3]["input_ids"][0] == 3 and shapes[3]["input_ids"][1] > 5


def test_bench_table_states_the_input_shape(text_cls_artifact: Path) -> None:
    done = zoo("bench", str(text_cls_artifact), "--batch-sizes", "2", "-n", "2")
    assert done.returncode == 0, done.stderr
    assert "input shape" in done.stdout and "input_ids 2x" in done.stdout


# ---------------------------------------------------------------- input errors that said the wrong thing


def test_input_errors_say_what_was_given(timm_artifact: Path, text_cls_artifact: Path, image_dir: Path) -> None:
    import zoo as zoo_api

    model = zoo_api.load(timm_artifact)
    with pytest.raises(zoo_api.InputError, match=f"'{image_dir}' is a directory, not an image file"):
        model.predict(str(image_dir))
    with pytest.raises(zoo_api.InputError, match="'https://example.com/x.png' is a URL"):
        model.predict("https://example.com/x.png")
    for raw in (b"\x89PNG", bytearray(b"ab"), memoryview(b"ab")):
        with pytest.raises(zoo_api.InputError, match=rf"got raw bytes \({type(raw).__name__}\)"):
            model.predict(raw)
    with pytest.raises(zoo_api.InputError, match=r"got raw bytes \(bytes\).*decode"):
        zoo_api.load(text_cls_artifact).predict(b"hello")
    # the twin: a file that really is missing is still called missing
    with pytest.raises(zoo_api.InputError, match="image file 'no/such.png' does not exist"):
        model.predict("no/such.png")


# ---------------------------------------------------------------- display


def test_piped_list_is_not_truncated() -> None:
    done = zoo("list")  # stdout is a pipe, COLUMNS=80
    assert done.returncode == 0 and "…" not in done.stdout
    line = next(row for row in done.stdout.splitlines() if "distilbert-sst2" in row)
    assert "hf:distilbert/distilbert-base-uncased-finetuned-sst-2-english" in line and "text-classification" in line


@pytest.mark.parametrize("command", [[], ["export"], ["predict"], ["bench"], ["finetune"], ["list"], ["verify"]])
def test_help_screens_have_no_type_noise(command: list[str]) -> None:
    done = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    assert "<bool>" not in done.output and "{" not in done.output.split("Usage:")[1].splitlines()[0]
    if command == ["predict"]:
        # INPUTS may be left out when --question and --context make the input (question answering)
        assert "predict [OPTIONS] ARTIFACT [INPUTS...]" in done.output


def test_embedding_prints_its_shape() -> None:
    from zoo.tasks.results import Embedding

    assert repr(Embedding(np.full(384, 0.05, np.float32))) == "Embedding(shape=(384,), norm=0.9798)"


# ---------------------------------------------------------------- fine-tune on a small machine


def test_nproc_above_the_cores_warns_instead_of_refusing(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.errors import ConfigError, ZooWarning
    from zoo.train import config as train_config

    monkeypatch.setattr(train_config, "device_slots", lambda: (2, "CPU cores"))
    base = dict(model="m", data="d", out="o", strategy="ddp", batch_size=8)
    with pytest.warns(ZooWarning, match="--nproc 4 is more than the 2 CPU cores"):
        train_config.validate(train_config.TrainConfig(nproc=4, **base))
    with pytest.raises(ConfigError, match="--nproc 9 is more than the 8 processes"):
        train_config.validate(train_config.TrainConfig(nproc=9, **base))
    monkeypatch.setattr(train_config, "device_slots", lambda: (2, "GPUs"))
    with pytest.raises(ConfigError, match="--nproc 4 is more than the 2 GPUs"):
        train_config.validate(train_config.TrainConfig(nproc=4, **base))
