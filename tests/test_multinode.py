"""Two nodes equal one: ``zoo finetune --nnodes 2`` started twice on one machine, as two nodes start it.

Each "node" is its own ``zoo finetune ... --nnodes 2 --nproc 1 --rdzv-endpoint localhost:PORT
--rdzv-id ID`` process (torch's elastic agent, one gloo worker); together they must train the
same steps as ``--nproc 2`` on one node: the same global batch (8, split 4 + 4), the same ranks, so
the same weights and metrics. Both nodes name the same ``--out``, as on a cluster's shared file
system; node rank 0 alone writes into it (the metrics log would hold every line twice otherwise).
One launch of the pair and one ``--nproc 2`` launch serve every test here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_finetune import tensors
from tests.test_train_parity import BATCH_NORM_TOLERANCE, max_weight_diff
from zoo.errors import ConfigError
from zoo.train.config import TrainConfig

# 4 steps of a global batch of 8, evaluated and checkpointed at step 2 and 4: the best step's
# checkpoint is reloaded by every rank (--keep best), which needs the shared run dir
ARGS = ["timm:test_resnet", "--random-init", "--data", "builtin:digits", "--image-size", "32", "--max-steps", "4",
        "--batch-size", "8", "--eval-every", "2", "--strategy", "ddp", "--no-progress"]
# the same ranks over the same gloo ring: only the launch differs, so the arithmetic is the same
TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def zoo(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "zoo", "finetune", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=540)
    assert process.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    """Both nodes and the one-node run, started together (each waits for its own rendezvous)."""
    root = tmp_path_factory.mktemp("multinode")
    endpoint = f"localhost:{free_port()}"
    nodes = [zoo(*ARGS, "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
                 "--out", str(root / "two-nodes")) for _ in range(2)]
    one = zoo(*ARGS, "--nproc", "2", "--out", str(root / "one-node"))
    outputs = [finished(p) for p in [*nodes, one]]
    return {"two": root / "two-nodes", "one": root / "one-node", "node_outputs": outputs[:2]}


def metrics(run: Path) -> list[dict]:
    timing = {"elapsed_s", "samples_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def assert_same_training(run: Path, reference: Path, tolerance: float = TOLERANCE) -> None:
    """The parity check: the same steps, metrics log and final weights as ``reference`` within ``tolerance``."""
    record, expected = (json.loads((r / "run.json").read_text()) for r in (run, reference))
    assert record["steps"] == expected["steps"]
    got, want = metrics(run), metrics(reference)
    assert [line["step"] for line in got] == [line["step"] for line in want]
    for line, ref in zip(got, want):
        assert line == pytest.approx(ref, rel=tolerance, abs=tolerance)
    assert max_weight_diff(tensors(run), tensors(reference)) <= tolerance


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_train_what_one_node_with_two_processes_trains(runs):
    two, one = runs["two"], runs["one"]
    record = json.loads((two / "run.json").read_text())
    assert record["world_size"] == 2 and record["config"]["nnodes"] == 2 and record["config"]["nproc"] == 1
    assert_same_training(two, one)
    # one writer: the same files as the one-node run, and every metrics line once
    assert files(two) == files(one)
    assert [line["step"] for line in metrics(two)] == [2, 2, 4, 4]  # train loss, then evaluation
    # each node ends with the run's summary (its share of the work is in the shared run dir)
    for out in runs["node_outputs"]:
        assert f"run dir: {two}" in out and "Traceback" not in out


def one_process(out: Path, seed: int) -> Path:
    from zoo.train.finetune import finetune

    return finetune("timm:test_resnet", "builtin:digits", out=out, seed=seed, random_init=True, image_size=32,
                    max_steps=4, batch_size=8, eval_every=2, progress=False)


@pytest.mark.slow
@pytest.mark.distributed
def test_parity_check_catches_a_run_with_another_seed(runs, tmp_path):
    """Twin: what a node started with another --seed does (another data order) fails the same check.

    One process is what two nodes train too, within the float rounding that synchronised batch norm
    adds (BATCH_NORM_TOLERANCE, see tests/test_train_parity.py); another seed is far outside it.
    """
    assert_same_training(one_process(tmp_path / "seed-0", seed=0), runs["two"], BATCH_NORM_TOLERANCE)
    with pytest.raises(AssertionError):
        assert_same_training(one_process(tmp_path / "seed-1", seed=1), runs["two"], BATCH_NORM_TOLERANCE)


# ---------------------------------------------------------------- the cluster files in examples/, parsed by zoo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# what the operator sets in a PyTorchJob's pods besides MASTER_ADDR and MASTER_PORT
OPERATOR_ENV = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "23456"}


def parsed(argv: list[str]) -> TrainConfig:
    """``zoo finetune ARGV`` as zoo's own parser reads it and its option checks accept it (nothing runs)."""
    import typer

    from zoo.cli import app
    from zoo.cli.finetune import given_options
    from zoo.train.config import validate

    command = typer.main.get_command(app).commands["finetune"]  # type: ignore[attr-defined]
    values = dict(command.make_context("finetune", list(argv)).params)
    name, _ = values.pop("name"), values.pop("as_json")
    config = TrainConfig(model=name or "", **given_options(values))
    validate(config)
    return config


def sbatch() -> tuple[dict[str, str], list[str]]:
    """The #SBATCH options and the zoo command line of the SLURM example, as a job on node001 runs it."""
    text = (EXAMPLES / "slurm" / "finetune.sbatch").read_text()
    options = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in text.splitlines()
                   if line.startswith("#SBATCH --"))
    srun = next(line for line in text.replace("\\\n", " ").splitlines() if line.startswith("srun "))
    job = {"head_node": "node001", "SLURM_JOB_NUM_NODES": options["nodes"], "SLURM_JOB_ID": "4242"}
    words = shlex.split(string.Template(srun).substitute(job))
    assert words[:3] == ["srun", "zoo", "finetune"]
    return options, words[3:]


def pytorchjob() -> list[tuple[str, dict[str, Any], list[str]]]:
    """(role, container, args) per replica of the Kubernetes example, with $(VAR) filled in as in its pods."""
    import yaml

    job = yaml.safe_load((EXAMPLES / "kubernetes" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    found = []
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        container = next(c for c in replica["template"]["spec"]["containers"] if c["name"] == "pytorch")
        env = {**OPERATOR_ENV, "MASTER_ADDR": "localhost" if role == "Master" else "zoo-finetune-master-0"}
        args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
        found.append((role, container, args))
    return found


@pytest.fixture
def eight_gpus(monkeypatch):
    """The examples' nodes have 8 GPUs each; the option checks count this machine's otherwise."""
    monkeypatch.setattr("zoo.train.config.device_slots", lambda: (8, "GPUs"))


def test_slurm_example_is_a_command_zoo_accepts(eight_gpus):
    subprocess.run(["bash", "-n", str(EXAMPLES / "slurm" / "finetune.sbatch")], check=True)
    options, argv = sbatch()
    config = parsed(argv)
    assert options["ntasks-per-node"] == "1"  # one zoo (one elastic agent) per node: it starts the workers
    assert (config.nnodes, config.nproc) == (int(options["nodes"]), int(options["gpus-per-node"]))
    assert (config.rdzv_endpoint, config.rdzv_id) == ("node001:29500", "4242")


def test_kubernetes_example_is_a_command_zoo_accepts_and_launches(eight_gpus, monkeypatch):
    from zoo.train.launch import in_torchelastic

    replicas = pytorchjob()
    assert [role for role, _, _ in replicas] == ["Master", "Worker"]
    configs = {role: parsed(args) for role, _, args in replicas}
    for role, container, _ in replicas:
        config = configs[role]
        assert container["command"] == ["zoo", "finetune"]
        assert (config.nnodes, config.nproc) == (len(replicas), container["resources"]["limits"]["nvidia.com/gpu"])
        for name, value in {**OPERATOR_ENV, "MASTER_ADDR": "x"}.items():
            monkeypatch.setenv(name, value)
        assert not in_torchelastic(config)  # the operator's RANK / WORLD_SIZE do not stop zoo launching
    assert configs["Master"].rdzv_endpoint == "localhost:23456"
    assert configs["Worker"].rdzv_endpoint == "zoo-finetune-master-0:23456"
    # the same pod environment without launch flags: each pod is one rank started by someone else
    assert in_torchelastic(TrainConfig(model="bert-base", data="d.csv"))


@pytest.mark.parametrize("change, error", [
    (["--nprocs", "8"], "No such option: --nprocs"),
    (["--rdzv-endpoint", ""], "--nnodes 2 needs --rdzv-endpoint"),
])
def test_a_broken_example_line_is_refused(eight_gpus, change, error):
    """Twin: the check above refuses a command line with a typo or a missing rendezvous."""
    from zoo.cli import ClickException  # typer's own click, vendored or not

    _, argv = sbatch()
    with pytest.raises((ClickException, ConfigError), match=re.escape(error)):
        parsed([*argv, *change])


def test_nodes_that_never_meet_are_one_line_naming_the_flags(monkeypatch, tmp_path):
    """A node that never joins (or an endpoint out of reach) ends in one LaunchError, not torch's traceback."""
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError

    from zoo.errors import LaunchError
    from zoo.train import launch

    def never_met(config, entrypoint):
        def run(*args):
            raise RendezvousTimeoutError("The node 'a_1_0' has timed out waiting for 1 more node.\nmore text")
        return run

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", never_met)
    config = TrainConfig(model="m", data="d", out=str(tmp_path / "run"), strategy="ddp", nnodes=2,
                         rdzv_endpoint="node001:29500")
    with pytest.raises(LaunchError) as raised:
        launch.spawn(config)
    assert str(raised.value) == (
        "the 2 node(s) did not meet at --rdzv-endpoint node001:29500 (--rdzv-id zoo): The node 'a_1_0' has timed "
        "out waiting for 1 more node; start zoo finetune on every node with the same --nnodes, --rdzv-endpoint "
        "and --rdzv-id, and check that the endpoint's host and port are reachable from each")
