"""What keeps 'zoo export' from burning CPU it does not need (issue 26: export + verify time).

No timings here (they depend on the machine and its load): each test checks that the setting
that saves the time is in place, and its twin that a caller's own choice is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _export_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """'zoo export' of a name that does not resolve: it fails in one line, after its process settings are made."""
    with pytest.raises(SystemExit) as info:
        main(["export", "resnet-18x", "--out", str(tmp_path / "art")])
    assert info.value.code == 1 and "error:" in capsys.readouterr().err
    return os.environ.get("OMP_WAIT_POLICY", "")


def test_export_lets_torch_threads_sleep_unless_the_user_chose(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert _export_unknown_model(tmp_path, capsys) == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _export_unknown_model(tmp_path, capsys) == "ACTIVE"


def test_the_cli_freezes_the_heap_at_exit_so_teardown_does_not_walk_it() -> None:
    # atexit._run_exitfuncs runs the handlers as interpreter exit would; the twin is a process without zoo.cli
    probe = "import atexit, gc{}; atexit._run_exitfuncs(); print(gc.get_freeze_count() > 0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    frozen = [subprocess.run([sys.executable, "-c", probe.format(extra)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60).stdout.strip() for extra in (", zoo.cli", "")]
    assert frozen == ["True", "False"]
