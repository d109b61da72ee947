"""A real ``zoo serve`` process for the serve tests: started on a free port, torch made unimportable.

The server runs the way a user starts it (the ``zoo`` CLI in a fresh
interpreter), with torch, transformers and timm blocked as on a runtime-only
install, so every live test is also a proof that serving needs no torch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "transformers", "timm", "torchvision")
SERVING_STACK = ("fastapi", "starlette", "uvicorn", "prometheus_client")  # pydantic comes with typer
WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these now fails, as where they are not installed
from zoo.cli import main
main(sys.argv[1:])
"""
# How long a server may take to load its artifacts; only a broken start ever waits this long.
START_LIMIT_S = 120


@dataclass
class LiveServer:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def text_arrays(artifact: Path, text: str) -> dict[str, np.ndarray]:
    """Graph inputs for one text, tokenised with the artifact's own tokenizer.json (no padding)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads to 128 on its own; each request keeps its length
    encoding = tokenizer.encode(text)
    fields = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
              "token_type_ids": encoding.type_ids}
    return {name: np.array([values], dtype=np.int64) for name, values in fields.items()}


def infer_json(arrays: dict[str, np.ndarray], **extra: object) -> dict:
    """An Open Inference Protocol request with every tensor as JSON data."""
    inputs = [{"name": n, "shape": list(a.shape), "datatype": "INT64" if a.dtype == np.int64 else "FP32",
               "data": a.reshape(-1).tolist()} for n, a in arrays.items()]
    return {"inputs": inputs, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def zoo_command(*args: str, blocked: tuple[str, ...] = TRAINING_STACK) -> list[str]:
    """The ``zoo`` CLI in a fresh interpreter where the ``blocked`` packages cannot be imported."""
    return [sys.executable, "-c", WITHOUT.format(blocked=blocked), *args]


def server_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextmanager
def live_server(args: list[str], log: Path) -> Iterator[LiveServer]:
    """``zoo serve ARGS`` on a free port; yields once /v2/health/ready answers 200, stops it with SIGTERM."""
    port = free_port()
    with open(log, "w") as sink:
        process = subprocess.Popen(zoo_command("serve", *args, "--port", str(port)), stdout=sink,
                                   stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=server_env())
    server = LiveServer(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


def wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"zoo serve exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"zoo serve did not become ready:\n{server.output()}")


def stop(server: LiveServer) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def metric(server: LiveServer, name: str, **labels: str) -> float:
    """One sample of the server's ``/metrics`` (0 when the series has not appeared yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0
