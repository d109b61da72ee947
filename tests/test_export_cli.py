"""``zoo export`` / ``zoo verify`` through the real CLI: exit codes, tables, JSON and error text.

    .venv/bin/pytest tests/test_export_cli.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _zoo(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


# one worker builds the module's artifacts once (make test runs --dist loadgroup)
pytestmark = pytest.mark.xdist_group("export-cli")


@pytest.fixture(scope="module")
def cli_artifact(timm_artifact) -> Path:
    """The session's timm artifact (the same export of the same folder); tests that change it copy it first."""
    return timm_artifact


@pytest.mark.slow
def test_export_then_verify_exit_zero(tiny_timm_folder, tmp_path, capsys) -> None:
    dest = tmp_path / "art"
    code, out, _ = _zoo(["export", str(tiny_timm_folder), "--onnx", "--out", str(dest), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["passed"] is True and report["path"] == str(dest.resolve()) and report["exporter"] == "dynamo"
    code, out, _ = _zoo(["verify", str(dest)], capsys)
    assert code == 0 and "verified" in out and "golden test_data_set_2" in out


@pytest.mark.slow
def test_export_failing_verification_exits_one_with_table(tiny_timm_folder, tmp_path, capsys) -> None:
    """Tolerances tighter than float32 noise: the table names the output, nothing lands at --out."""
    dest, kept = tmp_path / "art", tmp_path / "kept"
    code, _, err = _zoo(["export", str(tiny_timm_folder), "--out", str(dest), "--atol", "0", "--rtol", "0",
                         "--keep-failed", str(kept)], capsys)
    assert code == 1
    assert "error: " in err and "does not match torch" in err and "output logits" in err and "FAIL" in err
    assert "|d| <= 0 + 0*max|torch row|" in err and "Traceback" not in err
    assert not dest.exists()
    assert json.loads((kept / "manifest.json").read_text())["verified"] is False


@pytest.mark.slow
def test_verify_tampered_artifact_exits_one(cli_artifact, tmp_path, capsys) -> None:
    folder = Path(shutil.copytree(cli_artifact, tmp_path / "tampered"))
    config = json.loads((folder / "preprocess.json").read_text())
    (folder / "preprocess.json").write_text(json.dumps({**config, "mean": [0.0, 0.0, 0.0]}))
    # a folder that no longer matches its manifest is refused before anything in it is parsed (issue 11)
    code, _, err = _zoo(["verify", str(folder)], capsys)
    assert code == 1 and "does not match its manifest" in err and "preprocess.json: size" in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    code, out, _ = _zoo(["verify", str(folder), "--json"], capsys)
    assert code == 1 and out == ""


def test_bad_flags_and_names_are_one_line_errors(tmp_path, capsys) -> None:
    code, _, err = _zoo(["export", "resnet18", "--atol", "-1", "--out", str(tmp_path / "a")], capsys)
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: --atol -1.0 must be")
    code, _, err = _zoo(["export", "resnet-18x", "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and "error:" in err and "Traceback" not in err
    code, _, err = _zoo(["verify", str(tmp_path / "missing")], capsys)
    assert code == 1 and "does not exist" in err
    (tmp_path / "not-artifact").mkdir()
    code, _, err = _zoo(["verify", str(tmp_path / "not-artifact")], capsys)
    assert code == 1 and "manifest.json is missing" in err


@pytest.mark.slow
def test_existing_destination_is_refused(cli_artifact, tiny_timm_folder, capsys) -> None:
    code, _, err = _zoo(["export", str(tiny_timm_folder), "--out", str(cli_artifact)], capsys)
    assert code == 1 and "already exists and is not empty" in err


@pytest.mark.slow
def test_zoo_verify_subprocess_and_without_torch(cli_artifact) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "zoo", "verify", str(cli_artifact)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    script = ("import sys; from exporters.verify import verify_artifact; "
              f"verify_artifact({str(cli_artifact)!r}); assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
