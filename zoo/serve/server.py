"""Run the app under uvicorn: the port claimed, every artifact loaded, then served; JSON access log, graceful shutdown.

    zoo serve artifacts/minilm artifacts/digits --port 8000

On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets the requests in
flight finish (at most ``GRACE_S`` seconds), then the app's lifespan stops the
batchers. ``--workers N`` starts N processes (uvicorn's supervisor), each loading
every artifact; the parent loads them once first so a broken artifact stops the
start before any worker exists. The port is bound before anything loads, so a
port in use is one error line at once; it listens only once the models are in.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.serve.models import ServeSettings, load_models

GRACE_S = 30
_CONFIG_ENV = "ZOO_SERVE_CONFIG"  # how the parent hands artifacts and settings to worker processes


def serve(artifacts: Sequence[str | Path], settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "info") -> None:
    """Load every artifact, then serve until interrupted. Raises ZooError before listening if any fails."""
    uvicorn = _require_uvicorn()
    if workers < 1:
        raise ConfigError(f"--workers {workers}; give 1 or more processes")
    listener = claim_port(host, port)  # before the models load: a port in use fails at once, not after them
    try:
        models = load_models(artifacts, settings)
    except BaseException:
        listener.close()
        raise
    configure_logging(log_level)
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": False,
                              "timeout_graceful_shutdown": GRACE_S, "log_config": None}
    if workers == 1:
        from zoo.serve.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(models, settings), **common))
        logging.getLogger("zoo.serve").info("zoo serve on http://%s:%d (Ctrl-C to stop)", host,
                                            listener.getsockname()[1])
        try:
            server.run(sockets=[listener])  # uvicorn closes it on shutdown
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown; uvicorn.run swallows it too
            pass
        return
    # uvicorn's supervisor binds the port again for its workers (its API takes no socket); the port is
    # free for the moment between, and a process that takes it then gets uvicorn's own bind error
    listener.close()
    del models  # each worker loads its own copy
    os.environ[_CONFIG_ENV] = json.dumps({"artifacts": [str(a) for a in artifacts],
                                          "settings": dataclasses.asdict(settings), "log_level": log_level})
    # prometheus-client's multi-process mode: every worker writes its samples under this folder
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zoo-serve-metrics-")
    try:
        uvicorn.run("zoo.serve.server:app_from_environment", factory=True, workers=workers, **common)
    finally:
        if own_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


def claim_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` as uvicorn binds it; not listening yet, so clients are refused until it is.

    Raises ConfigError with one line when the address cannot be had (in use, privileged, not this machine's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_problem(host, port, exc)) from None
    return sock


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; choose another with --port, or stop the process that holds it"
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {host}:{port}: permission denied (ports below 1024 need root); choose another "
                "with --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {host}:{port}: {host} is not an address of this machine; give one with --host "
                "(127.0.0.1, or 0.0.0.0 for every interface)")
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port"


def app_from_environment() -> Any:
    """The app of one worker process, from the configuration its parent put in the environment."""
    from zoo.serve.app import create_app

    config = json.loads(os.environ[_CONFIG_ENV])
    settings = ServeSettings(**config["settings"])
    configure_logging(config["log_level"])
    return create_app(load_models(config["artifacts"], settings), settings)


def configure_logging(level: str) -> None:
    """One line per event on stderr: access lines are JSON objects, server events plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("zoo.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def _require_uvicorn() -> Any:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigError(f"zoo serve needs the serving extra ({exc.name} is not installed): "
                          "pip install 'zoo-toolkit[serve]'") from None
    return uvicorn
