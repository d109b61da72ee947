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
