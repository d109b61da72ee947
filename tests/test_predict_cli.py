"""``zoo predict`` through typer's CliRunner and a real subprocess: tables, JSON, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoo.cli.app import app

runner = CliRunner()


def test_predict_text_table(text_cls_artifact: Path) -> None:
    done = runner.invoke(app, ["predict", str(text_cls_artifact), "I loved it", "Dreadful", "--top-k", "2"])
    assert done.exit_code == 0, done.output
    assert "I loved it" in done.output and "Dreadful" in done.output
    assert "positive" in done.output and "negative" in done.output and "score" in done.output


def test_predict_json(text_cls_artifact: Path) -> None:
    done = runner.invoke(app, ["predict", str(text_cls_artifact), "I loved it", "--json", "-k", "2"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.output)
    assert rows[0]["input"] == "I loved it" and len(rows[0]["top_k"]) == 2
    assert rows[0]["label"] in ("positive", "negative")


def test_predict_image_and_entities(timm_artifact: Path, image_file: Path, ner_artifact: Path) -> None:
    done = runner.invoke(app, ["predict", str(timm_artifact), str(image_file), "--top-k", "3"])
    assert done.exit_code == 0, done.output
    assert all(label in done.output for label in ("cat", "dog", "bird"))
    done = runner.invoke(app, ["predict", str(ner_artifact), "Barack Obama lives in Chicago", "--json"])
    assert done.exit_code == 0, done.output
    assert "entities" in json.loads(done.output)[0]


def _zoo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda art, tmp: [str(tmp / "nothing-here"), "hi"], "does not exist"),
    (lambda art, tmp: [str(art), "missing.jpg"], "image file 'missing.jpg' does not exist"),
])
def test_predict_errors_are_one_line(make_args, message: str, timm_artifact: Path, tmp_path: Path) -> None:
    done = _zoo("predict", *make_args(timm_artifact, tmp_path))
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_predict_refuses_a_tampered_artifact(text_cls_artifact: Path, tmp_path: Path) -> None:
    import shutil

    art = shutil.copytree(text_cls_artifact, tmp_path / "art")
    data = bytearray((art / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    done = _zoo("predict", str(art), "hello")
    assert done.returncode == 1 and "model.onnx: sha256 differs" in done.stderr


_WITHOUT_TORCH = """
import sys
for name in ("torch", "transformers", "timm", "torchvision"):
    sys.modules[name] = None  # any import of these now fails, as on a core-only install
from zoo.cli import main
main(sys.argv[1:])
"""


def test_predict_runs_where_torch_cannot_be_imported(text_cls_artifact: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "predict", str(text_cls_artifact), "hi", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["label"] in ("positive", "negative")


def test_blocking_torch_is_noticed() -> None:
    """The twin: the same blocker does break a command that needs torch."""
    code = _WITHOUT_TORCH.replace("from zoo.cli import main\nmain(sys.argv[1:])", "import zoo.create, torch")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "torch" in done.stderr


def test_core_install_needs_no_torch() -> None:
    """Packaging: [project.dependencies] (runtime + CLI) hold no deep-learning stack; [train] does."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert {"onnxruntime", "tokenizers", "pillow", "numpy", "typer", "rich"} <= names
    assert not names & {"torch", "transformers", "timm", "torchvision", "sentence-transformers"}
    train = " ".join(project["optional-dependencies"]["train"])
    assert "torch" in train and "timm" in train and "transformers" in train
