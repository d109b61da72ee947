"""``zoo predict`` through typer's CliRunner and a real subprocess: tables, JSON, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_runtime_fixtures import (  # noqa: F401  (pytest fixtures)
    image_file,
    ner_artifact,
    ner_folder,
    text_cls_artifact,
    timm_artifact,
)
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
