"""Starting workers with torch's own elastic launcher (what ``torchrun`` runs), never a home-made one.

``zoo finetune --nproc N`` calls ``elastic_launch`` with this module's ``worker``
as the entry point; ``torchrun ... -m zoo finetune ...`` (or a cluster launcher)
sets the torchelastic environment instead, and each process then runs as that
worker directly, so multi-node rendezvous is torchrun's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.elastic.rendezvous.api import RendezvousError

from zoo.errors import LaunchError, first_line
from zoo.train.config import TrainConfig
from zoo.train.worker import INTERRUPTED_EXIT, Interrupted, exit_interrupted, train_and_save

# every node of a multi-node job must name the same rendezvous; torchrun's default is a fixed id too
SHARED_RDZV_ID = "zoo"
# a worker's exit code -> the stop signal it means: our quiet Ctrl-C exit, or killed by SIGINT / SIGTERM
STOP_EXITS = {INTERRUPTED_EXIT: signal.SIGINT, -signal.SIGINT: signal.SIGINT, -signal.SIGTERM: signal.SIGTERM}


def in_torchelastic(config: TrainConfig) -> bool:
    """True inside a process started by torchrun / torch.distributed.run (or a compatible launcher).

    A cluster may set RANK, WORLD_SIZE and MASTER_ADDR for every pod (Kubeflow's PyTorchJob does):
    that means "already started" only when no launch flags were given; with ``--nnodes`` or
    ``--rdzv-endpoint`` zoo is the launcher on each node and its workers get their own ranks.
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return True
    launching = config.nnodes > 1 or bool(config.rdzv_endpoint)
    return not launching and all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


class WorkerFailed(LaunchError):
    """A worker failed; ``worker_traceback`` is its own traceback, also saved as ``<run>/worker-error.txt``."""

    def __init__(self, message: str, worker_traceback: str, saved: Path | None):
        super().__init__(message)
        self.worker_traceback = worker_traceback
        self.saved = saved


def spawn(config: TrainConfig) -> None:
    """Run ``config.nproc`` workers on this node; a failure becomes one LaunchError naming the rank.

    With ``--nnodes N`` every node runs this with the same ``--rdzv-endpoint``: the node whose
    host is the endpoint's serves the c10d store, the others join it, and the ranks are numbered
    over all nodes. Ctrl-C (or SIGTERM from a scheduler) stops the workers and raises Interrupted.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    single_node_id = f"zoo-{uuid.uuid4().hex[:8]}"  # a private store on a free port: any id is unique
    run_id = config.rdzv_id or (SHARED_RDZV_ID if config.nnodes > 1 else single_node_id)
    launch = LaunchConfig(
        min_nodes=config.nnodes, max_nodes=config.nnodes, nproc_per_node=config.nproc, run_id=run_id,
        rdzv_backend="c10d",
        # localhost:0 lets the c10d store pick a free port, as torchrun --standalone does
        rdzv_endpoint=config.rdzv_endpoint or "localhost:0",
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
    )
    world = config.nproc * config.nnodes
    try:
        with _quiet_elastic_logs(), _own_signal_handlers():
            elastic_launch(launch, worker)(config.to_dict())
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        stopped_by = STOP_EXITS.get(failure.exitcode)
        if stopped_by:  # the workers got the signal too (a process group, SLURM's scancel) and ended first
            raise Interrupted(Path(config.out), stopped_by) from None
        text = worker_traceback(failure)
        saved = save_traceback(Path(config.out), f"worker rank {rank} of {world}", text)
        where = f" (its traceback: {saved}; --debug prints it)" if saved else ""
        raise WorkerFailed(f"worker rank {rank} of {world} failed: "
                           f"{failure_message(failure)}{where}", text, saved) from None
    except RendezvousError as exc:  # a node that never came, an endpoint out of reach
        why = first_line(exc).rstrip(".")
        raise LaunchError(f"the {config.nnodes} node(s) did not meet at --rdzv-endpoint {launch.rdzv_endpoint} "
                          f"(--rdzv-id {run_id}): {why}; start zoo finetune on every node with the same --nnodes, "
                          "--rdzv-endpoint and --rdzv-id, and check that the endpoint's host and port are reachable "
                          "from each") from None
    except SignalException as exc:  # the agent stopped its workers on the signal, then raised this
        raise Interrupted(Path(config.out), exc.sigval) from None
    except KeyboardInterrupt:  # Ctrl-C before the workers started (during the rendezvous)
        raise Interrupted(Path(config.out), signal.SIGINT) from None


@contextlib.contextmanager
def _quiet_elastic_logs() -> Iterator[None]:
    """The LaunchError or Interrupted raised here says it once, without torch's warnings and traceback wall.

    torch's elastic modules give each logger its own level, so the parent's level alone does not reach them.
    """
    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]
    loggers = [logging.getLogger(n) for n in ["torch.distributed.elastic", *names]]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """torch's agent replaces the SIGINT/SIGTERM handlers while it runs workers; put the caller's back after."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


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
    # outside training, and once it has stopped, Ctrl-C (or the agent forwarding it) ends the worker quietly
    signal.signal(signal.SIGINT, lambda signum, frame: exit_interrupted())
    try:
        train_and_save(config_from_dict(values), checked=True)
    except KeyboardInterrupt:  # Interrupted: training stopped on Ctrl-C
        exit_interrupted()
