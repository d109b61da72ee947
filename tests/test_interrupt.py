"""Ctrl-C during ``zoo finetune``: two lines that say how to continue, exit code 130, no traceback.

A terminal's Ctrl-C signals the whole process group: torch's elastic agent and every worker at
once. The agent stops the workers, the workers exit quietly, and ``--resume`` continues the run from
its last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_finetune import cli, metric_lines


def wait_for_checkpoint(run: Path, process: subprocess.Popen, deadline_s: float = 540) -> None:
    """Poll until the run has a complete checkpoint: training has started and can be resumed."""
    from zoo.train.checkpoint import complete_checkpoints

    start = time.monotonic()
    while not complete_checkpoints(run):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() - start < deadline_s, "no checkpoint was written"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.distributed
def test_ctrl_c_of_a_ddp_run_prints_how_to_continue_and_resume_continues(tmp_path, capsys):
    from zoo.train.checkpoint import complete_checkpoints

    run = tmp_path / "run"
    # far more steps than the test waits for: the signal always lands while training runs
    args = ["timm:test_resnet", "--random-init", "--data", "builtin:digits", "--image-size", "32", "--batch-size", "8",
            "--max-steps", "1000", "--checkpoint-every", "1", "--strategy", "ddp", "--nproc", "2", "--no-progress",
            "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "zoo", "finetune", *args], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_checkpoint(run, process)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the agent and both workers
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    step = int(complete_checkpoints(run)[-1].name.removeprefix("step_"))
    assert process.returncode == 130, output
    assert "Traceback" not in output
    shown = [line for line in output.splitlines() if not line.startswith("warning:")]
    assert shown == [f"interrupted; {run} holds a checkpoint at step {step}",
                     f"continue with: zoo finetune --resume --out {run}"], output

    # the printed command continues the run (here in one process, two steps further, then pauses)
    command = shown[-1].removeprefix("continue with: zoo ").split()
    code, out, err = cli([*command, "--strategy", "single", "--nproc", "1", "--pause-at", str(step + 2)], capsys)
    assert code == 0, err
    assert f"paused at step {step + 2} of 1000" in out
    assert complete_checkpoints(run)[-1].name == f"step_{step + 2}"
    assert [line["step"] for line in metric_lines(run, "train_loss")][-1] == step + 2


def _checkpoint_writer_interrupted(*args: object) -> None:
    """What torch's checkpoint writer does with Ctrl-C: its own exception, the KeyboardInterrupt inside."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises KeyboardInterrupt at once
    except KeyboardInterrupt as exc:
        raise RuntimeError("CheckpointException ranks:dict_keys([0])") from exc


def _checkpoint_writer_failed(*args: object) -> None:
    raise RuntimeError("disk full")


@pytest.mark.parametrize("body, expected", [(_checkpoint_writer_interrupted, "Interrupted"),
                                            (_checkpoint_writer_failed, "RuntimeError")])
def test_an_exception_after_ctrl_c_is_the_interruption_and_otherwise_stays_itself(monkeypatch, body, expected):
    """Ctrl-C that surfaces as another exception still stops quietly; the twin: a real failure is not hidden."""
    from zoo.train import worker
    from zoo.train.config import TrainConfig

    monkeypatch.setattr(worker, "_run", body)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises((worker.Interrupted, RuntimeError)) as raised:
        worker.train_and_save(TrainConfig(model="m", data="d", out="runs/x"), checked=True)
    assert type(raised.value).__name__ == expected
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's Ctrl-C handling is back


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(monkeypatch, tmp_path, capsys):
    from zoo.train import finetune as finetune_module
    from zoo.train.worker import Interrupted

    run = tmp_path / "run"
    run.mkdir()

    def interrupted(*args: object, **kwargs: object) -> Path:
        raise Interrupted(run)

    monkeypatch.setattr(finetune_module, "finetune", interrupted)
    code, out, err = cli(["finetune", "timm:test_resnet", "--data", "builtin:digits", "--out", str(run)], capsys)
    assert code == 130 and out == ""
    assert err == (f"interrupted before the first checkpoint: {run} holds nothing to resume; remove it or give "
                   "another --out to start again\n")


@pytest.mark.parametrize("exitcode, expected", [(130, signal.SIGINT), (-signal.SIGTERM, signal.SIGTERM), (1, None)])
def test_workers_ended_by_a_stop_signal_are_an_interruption(monkeypatch, tmp_path, exitcode, expected):
    """A scheduler's SIGTERM reaches the workers too (SLURM signals every process of the step); the twin:
    a worker that failed on its own is a failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from zoo.train import launch
    from zoo.train.config import TrainConfig

    def ended(config, entrypoint):
        def run(*args):
            failure = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file=str(tmp_path / "none.json"))
            raise ChildFailedError("worker", {0: failure})
        return run

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", ended)
    config = TrainConfig(model="m", data="d", out=str(tmp_path / "run"), strategy="ddp", nproc=2)
    with pytest.raises((launch.Interrupted, launch.WorkerFailed)) as raised:
        launch.spawn(config)
    if expected is None:
        assert isinstance(raised.value, launch.WorkerFailed)
    else:
        assert isinstance(raised.value, launch.Interrupted) and raised.value.signum == expected
