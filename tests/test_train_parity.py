"""Strategy parity: DDP and FSDP2 (2 gloo processes) take the same steps as one process.

One elastic launch runs both distributed strategies and writes what they did to
JSON/torch files; the single-process reference runs in the test process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import record


STEPS = 3
TOLERANCE = 1e-5


def _setup(strategy: Any, out: Path) -> Any:
    """A Trainer over timm's test_vit (no dropout, no batch norm: exact parity is possible).

    A small learning rate: Adam divides by sqrt(v), so float-rounding noise in near-zero
    gradients becomes a weight change proportional to lr.
    """
    from zoo.data.collate import ImageExamples
    from zoo.data.prepare import PreparedData
    from zoo.resolve import resolve
    from zoo.train.config import TrainConfig
    from zoo.train.finetune import training_spec
    from zoo.train.loop import Trainer
    from zoo.train.worker import build_model
    from zoo.tasks import get_task

    config = TrainConfig(model="timm:test_vit", data="synthetic", out=str(out), batch_size=8, grad_accum=2,
                         max_steps=STEPS, lr=2e-4, warmup=0.3, image_size=32, progress=False, random_init=True)
    spec = training_spec(resolve("timm:test_vit"), config)
    gen = torch.Generator().manual_seed(1)
    def examples(n: int) -> ImageExamples:
        return ImageExamples(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                             torch.randint(0, 3, (n,), generator=gen), (0.5,) * 3, (0.5,) * 3)
    data = PreparedData("synthetic", "-", "image-classification", ("a", "b", "c"), examples(64), examples(13),
                        {}, "synthetic")
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, data.labels, config))
    model.train()
    runner = get_task(spec.task).export_module(model, spec)
    return Trainer(model, runner, strategy, data, config, out, spec)


def run_steps(strategy: Any, out: Path) -> dict[str, Any]:
    from zoo.train import batches

    trainer = _setup(strategy, out)
    plan = batches.epoch_steps(64, 8, 2, 0, 0)
    seen: list[str] = []
    first_block = next(m for n, m in trainer.model.named_modules() if n.endswith("blocks.0"))
    first_block.register_forward_hook(lambda _m, _i, output: seen.append(str(output.dtype)))
    norms = []
    for micro in plan[:STEPS]:
        norms.append(trainer.train_step(micro))
        trainer.state.step += 1
    # measured before evaluating: FSDP2 leaves the root's parameters gathered after a forward
    shards = shard_fractions(trainer)
    master = sorted({str(p.dtype) for p in trainer.model.parameters()})
    result = {"norms": norms, "eval": trainer.evaluate(), "shards": shards, "compute": sorted(set(seen)),
              "master": master}
    result["weights"] = strategy.full_state_dict(trainer.model)
    return result


def shard_fractions(trainer: Any) -> dict[str, float]:
    """Share of parameter and optimizer-state elements this rank holds locally."""
    local = full = opt_local = opt_full = 0
    for p in trainer.model.parameters():
        here = p.to_local() if hasattr(p, "to_local") else p
        local, full = local + here.numel(), full + p.numel()
        avg = trainer.optimizer.state.get(p, {}).get("exp_avg")
        if avg is None:  # a parameter that received no gradient has no optimizer state
            continue
        opt_local += (avg.to_local() if hasattr(avg, "to_local") else avg).numel()
        opt_full += avg.numel()
    kinds = sorted({type(p).__name__ for p in trainer.model.parameters()})
    return {"params": local / full, "optimizer": opt_local / opt_full, "types": kinds}


@record
def parity_worker(out: str) -> None:
    """Entry point of each of the 2 launched processes."""
    from zoo.train.strategies import make_strategy

    results = {}
    for name, precision in (("ddp", "fp32"), ("fsdp", "fp32"), ("fsdp", "bf16")):
        strategy = make_strategy(name, precision)
        results[f"{name}-{precision}"] = run_steps(strategy, Path(out) / f"{name}-{precision}")
    rank = strategy.rank
    shards = {name.removesuffix("-fp32"): r["shards"] for name, r in results.items()}
    Path(out, f"shards_{rank}.json").write_text(json.dumps(shards))
    if rank == 0:
        for name, r in results.items():
            torch.save({k: v for k, v in r.items() if k != "shards"}, Path(out) / f"{name.removesuffix('-fp32')}.pt")
    strategy.close()


def _launch(out: Path) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id="parity", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    elastic_launch(config, parity_worker)(str(out))


@pytest.fixture(scope="session")
def launched(tmp_path_factory) -> Path:
    """One launch for the whole test session, shared by all xdist workers through a file lock."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "zoo-train-parity"
    with FileLock(f"{root}.lock"):
        if not (root / "done").is_file():
            root.mkdir(exist_ok=True)
            _launch(root)
            (root / "done").write_text("ok")
    return root


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict[str, Any]:
    from zoo.train.strategies import SingleStrategy

    return run_steps(SingleStrategy(), tmp_path_factory.mktemp("single"))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_distributed_steps_match_single_process(launched, reference, name):
    got = torch.load(launched / f"{name}.pt", weights_only=False)
    assert got["norms"] == pytest.approx(reference["norms"], rel=1e-5)
    assert got["eval"]["val_loss"] == pytest.approx(reference["eval"]["val_loss"], rel=1e-5)
    assert got["eval"]["val_accuracy"] == reference["eval"]["val_accuracy"]
    assert max_weight_diff(got["weights"], reference["weights"]) <= TOLERANCE
    # training moved the weights: parity is not the trivial "nothing happened"
    start = _initial_weights()
    assert max_weight_diff(start, reference["weights"]) > 1e-4


def _initial_weights() -> dict[str, torch.Tensor]:
    from zoo.train.strategies import SingleStrategy

    trainer = _setup(SingleStrategy(), Path("/nonexistent-unused"))
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_bf16_computes_in_bf16_with_fp32_master_weights(launched, reference):
    got = torch.load(launched / "fsdp-bf16.pt", weights_only=False)
    assert got["compute"] == ["torch.bfloat16"] and reference["compute"] == ["torch.float32"]
    assert got["master"] == ["torch.float32"]  # the sharded parameters the optimizer updates
    assert got["norms"] == pytest.approx(reference["norms"], rel=5e-2)
    assert got["norms"] != pytest.approx(reference["norms"], rel=1e-6)  # bf16 really changed the arithmetic


def test_weight_diff_catches_a_planted_change(reference):
    """Twin of the parity check: one nudged weight is seen."""
    changed = {k: v.clone() for k, v in reference["weights"].items()}
    key = next(iter(changed))
    changed[key].view(-1)[0] += 1e-4
    assert max_weight_diff(changed, reference["weights"]) > TOLERANCE


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_shards_parameters_and_optimizer_state(launched):
    for rank in (0, 1):
        shards = json.loads((launched / f"shards_{rank}.json").read_text())
        assert shards["fsdp"]["types"] == ["DTensor"]
        assert 0.3 < shards["fsdp"]["params"] < 0.7
        assert 0.3 < shards["fsdp"]["optimizer"] < 0.7
        # the twin: DDP keeps a full replica on every rank
        assert shards["ddp"]["params"] == 1.0 and shards["ddp"]["optimizer"] == 1.0
