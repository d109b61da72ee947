"""Starting and stopping ``zoo serve``: a broken artifact stops the start, SIGTERM lets requests finish."""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import zoo
from tests.serving import (
    ROOT,
    SERVING_STACK,
    LiveServer,
    free_port,
    infer_json,
    live_server,
    server_env,
    wait_ready,
    zoo_command,
)
from zoo.errors import ArtifactError, ConfigError
from zoo.serve.models import ServeSettings
from zoo.serve.server import _bind_problem, serve


def pixels(artifact: Path, rows: int = 1) -> dict[str, np.ndarray]:
    shape = zoo.load(artifact, check_hashes=False).info["inputs"][0]["shape"][1:]
    return {"pixel_values": np.random.default_rng(rows).standard_normal((rows, *shape)).astype(np.float32)}


def test_a_broken_artifact_means_no_server(timm_artifact: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(timm_artifact, tmp_path / "broken")
    data = bytearray((broken / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    done = subprocess.run(zoo_command("serve", str(timm_artifact), str(broken), "--port", str(free_port())),
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=server_env())
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot serve: 'broken': ") and "model.onnx: sha256 differs" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Uvicorn running" not in done.stderr + done.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_port_in_use_is_one_error_line(timm_artifact: Path, taken_port: int) -> None:
    done = subprocess.run(zoo_command("serve", str(timm_artifact), "--port", str(taken_port)), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=server_env())
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: port {taken_port} on 127.0.0.1 is in use; choose another with "
                                        "--port, or stop the process that holds it"]
    assert "Application startup complete" not in done.stdout


def test_the_port_is_claimed_before_any_artifact_is_read(tmp_path: Path, taken_port: int) -> None:
    # a missing artifact would stop the start too: the port is what stops it, so it was checked first
    with pytest.raises(ConfigError, match=f"port {taken_port} on 127.0.0.1 is in use"):
        serve([str(tmp_path / "missing")], ServeSettings(), port=taken_port)


def test_an_address_of_another_machine_is_refused(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine
    with pytest.raises(ConfigError, match="192.0.2.1 is not an address of this machine; give one with --host"):
        serve([str(tmp_path / "missing")], ServeSettings(), host="192.0.2.1", port=free_port())


BIND_PROBLEMS = {
    "privileged": (OSError(errno.EACCES, "Permission denied"), "cannot listen on 0.0.0.0:80: permission denied "
                   "(ports below 1024 need root); choose another with --port"),
    "unresolvable": (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                     "cannot listen on 0.0.0.0:80 (Name or service not known); check --host and --port"),
}


@pytest.mark.parametrize("exc, message", BIND_PROBLEMS.values(), ids=BIND_PROBLEMS.keys())
def test_other_bind_failures_are_named(exc: OSError, message: str) -> None:
    # bind() raises these only without root or with a resolver; given directly, the test runs on any machine
    assert _bind_problem("0.0.0.0", 80, exc) == message


def test_a_free_port_twin_reaches_the_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot serve: 'missing'"):
        serve([str(tmp_path / "missing")], ServeSettings(), port=free_port())


def test_serve_without_the_extra_says_how_to_install_it(timm_artifact: Path) -> None:
    done = subprocess.run(zoo_command("serve", str(timm_artifact), blocked=SERVING_STACK), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=server_env())
    assert done.returncode == 1 and "pip install 'zoo-toolkit[serve]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_lets_the_request_in_flight_finish(timm_artifact: Path, tmp_path: Path) -> None:
    # a client halfway through its upload when the signal arrives: its request is in flight
    feed = pixels(timm_artifact)
    body = json.dumps(infer_json(feed)).encode()
    with live_server([f"timm={timm_artifact}"], tmp_path / "server.log") as server:
        head = (f"POST /v2/models/timm/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as slow:
            slow.sendall(head + body[:len(body) // 2])
            # the request counts as in flight once uvicorn has parsed its head and called the app; on a
            # loaded machine that can lag the send, and a connection still idle at SIGTERM is closed
            time.sleep(2.0)
            server.process.send_signal(signal.SIGTERM)
            _wait_for(server, "Shutting down")
            slow.sendall(body[len(body) // 2:])
            reply = _read_all(slow)
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is the signal's
        assert server.process.wait(60) in (0, -signal.SIGTERM)
    status, _, payload = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    expected = zoo.load(timm_artifact)(**feed)
    (name,) = expected
    answer = json.loads(payload)
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], np.float32).reshape(
        expected[name].shape), expected[name])
    log = server.output()
    assert log.index("Shutting down") < log.index('"path":"/v2/models/timm/infer"') < log.index(
        "Application shutdown complete")
    assert "Traceback" not in log


def _wait_for(server: LiveServer, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in server.output() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert text in server.output()


def _read_all(sock: socket.socket) -> bytes:
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is not None and len(payload) >= length:
            break
    return reply


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
