"""Starting workers with torch's own elastic launcher (what ``torchrun`` runs), never a home-made one.

``zoo finetune --nproc N`` calls ``elastic_launch`` with this module's ``worker``
as the entry point; ``torchrun ... -m zoo finetune ...`` (or a cluster launcher)
sets the torchelastic environment instead, and each process then runs as that
worker directly, so multi-node rendezvous is torchrun's own.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from zoo.errors import LaunchError
from zoo.train.config import TrainConfig


def in_torchelastic() -> bool:
    """True inside a process started by torchrun / torch.distributed.run (or a compatible launcher)."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


class WorkerFailed(LaunchError):
    """A worker failed; ``worker_traceback`` is its own traceback, also saved as ``<run>/worker-error.txt``."""

    def __init__(self, message: str, worker_traceback: str, saved: Path | None):
        super().__init__(message)
        self.worker_traceback = worker_traceback
        self.saved = saved


def spawn(config: TrainConfig) -> None:
    """Run ``config.nproc`` workers on this node; a failure becomes one LaunchError naming the rank."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=config.nnodes, max_nodes=config.nnodes, nproc_per_node=config.nproc,
        run_id=config.rdzv_id or f"zoo-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
        # localhost:0 lets the c10d store pick a free port, as torchrun --standalone does
        rdzv_endpoint=config.rdzv_endpoint or "localhost:0",
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
    )
    elastic_log = logging.getLogger("torch.distributed.elastic")
    level = elastic_log.level
    elastic_log.setLevel(logging.CRITICAL)  # the LaunchError below says it once, without a traceback wall
    try:
        elastic_launch(launch, worker)(config.to_dict())
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        text = worker_traceback(failure)
        saved = save_traceback(Path(config.out), f"worker rank {rank} of {config.nproc * config.nnodes}", text)
        where = f" (its traceback: {saved}; --debug prints it)" if saved else ""
        raise WorkerFailed(f"worker rank {rank} of {config.nproc * config.nnodes} failed: "
                           f"{failure_message(failure)}{where}", text, saved) from None
    finally:
        elastic_log.setLevel(level)


def failure_message(failure: Any) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    text = str(message or f"exit code {failure.exitcode}").strip()
    return text.splitlines()[0] if text else f"exit code {failure.exitcode}"


def worker_traceback(failure: Any) -> str:
    """The worker's own traceback, as torch's ``@record`` stored it (else its message or exit code)."""
    message = failure.message
    if isinstance(message, dict):
        stack = (message.get("extraInfo") or {}).get("py_callstack")
        return str(stack or message.get("message") or "").strip() or f"exit code {failure.exitcode}"
    return str(message or f"exit code {failure.exitcode}").strip()


def save_traceback(out: Path, who: str, text: str) -> Path | None:
    """``<run>/worker-error.txt`` (the run dir is made for it when the worker failed before making it)."""
    from zoo.train.preflight import ERROR_FILE

    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / ERROR_FILE
        path.write_text(f"{who} failed:\n{text}\n")
    except OSError:  # an unwritable --out must not hide the worker's own error
        return None
    return path


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(values)


@record
def worker(values: dict[str, Any]) -> None:
    """Entry point of each spawned process (picklable: a module-level function)."""
    from zoo.train.worker import train_and_save

    train_and_save(config_from_dict(values), checked=True)
