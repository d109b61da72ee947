"""The task endpoint takes audio uploads: POST /v1/models/NAME/predict with WAV files, in-process (TestClient).

    .venv/bin/pytest tests/test_serve_audio.py
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from zoo.cli.app import app as cli
from zoo.serve import ServeSettings, create_app, load_models

SETTINGS = ServeSettings(max_batch_size=8, max_wait_ms=2, max_body_bytes=1 << 20)
RATE = 16_000


@pytest.fixture(scope="module")
def client(ast_artifact: Path) -> Iterator[TestClient]:
    models = load_models([f"ast={ast_artifact}"], SETTINGS)
    with TestClient(create_app(models, SETTINGS)) as test_client:
        yield test_client


def _wav_bytes(seconds: float, rate: int = RATE, pitch: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.4 * np.sin(2 * np.pi * pitch * t), rate, format="WAV")
    return buffer.getvalue()


def test_a_wav_upload_is_what_zoo_predict_json_prints(client: TestClient, ast_artifact: Path,
                                                      tmp_path: Path) -> None:
    clips = {"a.wav": _wav_bytes(1.2), "b.wav": _wav_bytes(0.4, rate=44_100, pitch=880.0)}
    for name, data in clips.items():
        (tmp_path / name).write_bytes(data)
    files = [("files", (name, data, "audio/wav")) for name, data in clips.items()]
    answer = client.post("/v1/models/ast/predict?top_k=2", files=files)
    assert answer.status_code == 200, answer.text
    done = CliRunner().invoke(cli, ["predict", str(ast_artifact), *(str(tmp_path / n) for n in clips), "--json",
                                    "--top-k", "2"])
    assert done.exit_code == 0, done.output
    expected = json.loads(done.output)
    for row, name in zip(expected, clips):
        row["input"] = name  # the CLI names the path it was given, the server the upload's name
    assert answer.json() == expected
    assert [len(row["top_k"]) for row in answer.json()] == [2, 2]


BAD_UPLOADS = {
    "not audio": ({"files": [("files", ("clip.wav", b"RIFF but not really", "audio/wav"))]},
                  400, "upload 'clip.wav' is not audio that soundfile can read"),
    "one millisecond": ({"files": [("files", ("blip.wav", _wav_bytes(0.001), "audio/wav"))]},
                        400, "ms long; this model needs at least"),
    "JSON instead of files": ({"json": {"inputs": ["clip.wav"]}}, 415, "takes audio files as multipart/form-data"),
    "no file": ({"data": {"top": "1"}, "files": [("x", ("", b"", "text/plain"))]}, 400,
                "no file in the multipart body; upload audio files"),
}


@pytest.mark.parametrize("kwargs, status, message", BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
def test_bad_uploads_are_one_clear_error(client: TestClient, kwargs: dict, status: int, message: str) -> None:
    answer = client.post("/v1/models/ast/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    # and the server keeps serving
    ok = client.post("/v1/models/ast/predict", files=[("files", ("ok.wav", _wav_bytes(0.5), "audio/wav"))])
    assert ok.status_code == 200, ok.text
