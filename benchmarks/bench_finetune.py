"""zoo finetune against a bare PyTorch loop (throughput), and FSDP against DDP (per-rank memory).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_finetune.py [--steps 30] [--rounds 3] [--threads 1]

1. Throughput, one process: zoo's training loop (``Trainer.train_step`` with the
   single strategy: seeded micro-steps, global-batch loss scaling, clipping, AdamW
   with decoupled weight decay groups, warmup + cosine) against a hand-written loop
   doing the same maths on the same model (timm test_resnet at 32 px, 10 classes),
   the same batches of builtin:digits and the same thread count. Rounds alternate
   zoo / bare so background load on a shared machine hits both alike; the best
   round of each counts. Target: zoo >= 0.95 x bare samples/s.
2. Memory, 2 gloo processes: per-rank training state (parameter + gradient +
   optimizer-state bytes held locally, after a real optimizer step) of FSDP2 against
   DDP, on a 6-block ViT-S. Target: FSDP <= 0.55 x DDP.

Writes benchmarks/results/finetune.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from machine import machine_info
from train_rounds import compare_rounds
from torch.distributed.elastic.multiprocessing.errors import record

BATCH = 64
MEMORY_MODEL = "timm:vit_small_patch16_224"
MEMORY_KWARGS = {"depth": 6}


def _config(model: str, out: str, **extra: Any) -> Any:
    from zoo.train.config import TrainConfig

    return TrainConfig(model=model, data="builtin:digits", out=out, batch_size=BATCH, max_steps=10_000, lr=1e-3,
                       random_init=True, image_size=32, progress=False, **extra)


def _build(config: Any, strategy: Any, data: Any = None) -> tuple[Any, Any]:
    """(Trainer, data) for ``config`` under ``strategy``: the same pieces ``zoo finetune`` uses."""
    from zoo.tasks import get_task
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model
    from zoo.train.preflight import prepare

    spec, prepared = prepare(config) if data is None else data
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, prepared.plan, config))
    model.train()
    runner = get_task(spec.task).export_module(model, spec)
    trainer = Trainer(model, runner, strategy, prepared, config, Path(config.out), spec)
    return trainer, (spec, prepared)


# ---------------------------------------------------------------- throughput


def _bare_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The hand-written loop's loss: forward, mean cross-entropy."""
    return F.cross_entropy(model(batch["pixel_values"]), batch["labels"])


def throughput(steps: int, rounds: int) -> dict[str, Any]:
    from zoo.train import batches
    from zoo.train.strategies import SingleStrategy

    with tempfile.TemporaryDirectory() as tmp:
        config = _config("timm:test_resnet", tmp)
        zoo_trainer, data = _build(config, SingleStrategy())
        bare_trainer, _ = _build(config, SingleStrategy(), data)
        plan = batches.epoch_steps(len(data[1].train), BATCH, 1, 0, 0)
        compared = compare_rounds(zoo_trainer, bare_trainer, plan, steps, rounds, BATCH, _bare_loss)
    return {"model": "timm:test_resnet @ 32 px, 10 classes", **compared}


# ---------------------------------------------------------------- memory


def state_bytes(trainer: Any) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held on this rank."""
    def local(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(trainer.model.parameters())
    out = {"params": sum(local(p) for p in params),
           "grads": sum(local(p.grad) for p in params if p.grad is not None),
           "optimizer": sum(local(v) for s in trainer.optimizer.state.values() for v in s.values()
                            if isinstance(v, torch.Tensor) and v.ndim > 0)}
    out["total"] = sum(out.values())
    return out


@record
def memory_worker(out: str) -> None:
    from zoo.train import batches
    from zoo.train.strategies import make_strategy

    results, data = {}, None
    for name in ("ddp", "fsdp"):
        strategy = make_strategy(name)
        config = _config(MEMORY_MODEL, out, strategy=name, nproc=2, model_kwargs=MEMORY_KWARGS)
        trainer, data = _build(config, strategy, data)
        plan = batches.epoch_steps(len(data[1].train), BATCH, 1, 0, 0)
        # gradients are kept (not freed) to count them: step, then rebuild them with one more backward
        trainer.train_step(plan[0])
        trainer.optimizer.zero_grad = lambda set_to_none=True: None  # keep grads for counting
        trainer.train_step(plan[1])
        results[name] = state_bytes(trainer)
    Path(out, f"memory_{strategy.rank}.json").write_text(json.dumps(results))
    strategy.close()


def memory() -> dict[str, Any]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory() as tmp:
        launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                              rdzv_endpoint="localhost:0", run_id="bench-memory", max_restarts=0,
                              start_method="spawn", monitor_interval=0.1)
        elastic_launch(launch, memory_worker)(tmp)
        ranks = [json.loads(Path(tmp, f"memory_{r}.json").read_text()) for r in (0, 1)]
    worst = {name: max(r[name]["total"] for r in ranks) for name in ("ddp", "fsdp")}
    return {"model": f"{MEMORY_MODEL} {MEMORY_KWARGS} @ 32 px", "per_rank": ranks,
            "ratio": worst["fsdp"] / worst["ddp"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory workers inherit it
    result = {"machine": machine_info(threads=args.threads), "throughput": throughput(args.steps, args.rounds),
              "memory": memory()}
    out = ROOT / "benchmarks" / "results" / "finetune.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"throughput zoo / bare loop: {result['throughput']['ratio']:.3f} (target >= 0.95)")
    print(f"per-rank training state FSDP / DDP: {result['memory']['ratio']:.3f} (target <= 0.55)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
