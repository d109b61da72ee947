"""Starting and stopping ``zoo serve``: a broken artifact stops the start, SIGTERM lets requests finish."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np

import zoo
from tests.serving import ROOT, SERVING_STACK, infer_json, live_server, server_env, wait_ready, zoo_command


def pixels(artifact: Path, rows: int = 1) -> dict[str, np.ndarray]:
    shape = zoo.load(artifact, check_hashes=False).info["inputs"][0]["shape"][1:]
    return {"pixel_values": np.random.default_rng(rows).standard_normal((rows, *shape)).astype(np.float32)}


def test_a_broken_artifact_means_no_server(timm_artifact: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(timm_artifact, tmp_path / "broken")
    data = bytearray((broken / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    done = subprocess.run(zoo_command("serve", str(timm_artifact), str(broken), "--port", "1"), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=server_env())
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot serve: 'broken': ") and "model.onnx: sha256 differs" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Uvicorn running" not in done.stderr + done.stdout


def test_serve_without_the_extra_says_how_to_install_it(timm_artifact: Path) -> None:
    done = subprocess.run(zoo_command("serve", str(timm_artifact), blocked=SERVING_STACK), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=server_env())
    assert done.returncode == 1 and "pip install 'zoo-toolkit[serve]'" in done.stderr
    assert "Traceback" not in done.stderr


def _queued(url: str) -> float:
    match = re.search(r'zoo_queue_depth\{model="timm",queue="infer"\} (\S+)', httpx.get(f"{url}/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_sigterm_lets_the_request_in_flight_finish(timm_artifact: Path, tmp_path: Path) -> None:
    # a long batching window holds the request inside the server while the signal arrives
    feed = pixels(timm_artifact)
    answers: list[httpx.Response] = []
    with live_server([f"timm={timm_artifact}", "--max-wait-ms", "1500", "--max-batch-size", "64"],
                     tmp_path / "server.log") as server:
        sender = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{server.url}/v2/models/timm/infer", json=infer_json(feed), timeout=60)))
        sender.start()
        deadline = time.monotonic() + 30
        while _queued(server.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _queued(server.url) == 1
        server.process.send_signal(signal.SIGTERM)
        sender.join(60)
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is the signal's
        assert server.process.wait(60) in (0, -signal.SIGTERM)
    (answer,) = answers
    assert answer.status_code == 200
    expected = zoo.load(timm_artifact)(**feed)
    (name,) = expected
    np.testing.assert_array_equal(np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(
        expected[name].shape), expected[name])
    log = server.output()
    assert log.index('"path":"/v2/models/timm/infer"') < log.index("Application shutdown complete")
    assert "Traceback" not in log


def test_workers_share_one_metrics_view(timm_artifact: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with live_server([f"timm={timm_artifact}", "--workers", "2"], log) as server:
        for _ in range(6):
            with httpx.Client() as fresh:  # a new connection each time, so both workers get some
                assert fresh.post(f"{server.url}/v2/models/timm/infer", json=infer_json(pixels(timm_artifact)),
                                  timeout=60).status_code == 200
        wait_ready(server)
        text = httpx.get(f"{server.url}/metrics").text
    counted = re.search(r'zoo_requests_total\{code="200",endpoint="/v2/models/\{name\}/infer",model="timm"\} (\S+)',
                        text)
    assert counted is not None and float(counted.group(1)) == 6.0
    assert len(set(re.findall(r"Started server process \[(\d+)\]", server.output()))) == 2
