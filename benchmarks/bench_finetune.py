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
3. DeepSpeed, 2 gloo processes (DS_ACCELERATOR=cpu), on the same ViT-S: per-rank training state of
   ZeRO-2, ZeRO-3 and ZeRO-3 with the optimizer offloaded, in fp32 and in bf16 (DDP bf16: fp32 weights,
   bf16 autocast), counted like DDP's plus DeepSpeed's own copies: its fp32 master partition (in fp32 the
   module's partition itself, counted once) and its gradient partitions. Target: ZeRO-3 <= 0.55 x DDP.
   Communication buffers are reported beside the total, for both: DDP's gradient buckets (a second copy
   of every gradient) and DeepSpeed's gradient bucket (``reduce_bucket_size`` elements). Throughput of
   DeepSpeed against DDP in interleaved rounds in the same 2 processes (median of each), each case with
   the F.linear it would have in a process of its own. Target: >= 0.8 x DDP.

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
    out["comm_buffers"] = ddp_bucket_bytes(trainer.model)
    return out


def ddp_bucket_bytes(model: Any) -> int:
    """Bytes of DDP's gradient buckets: a second copy of every gradient (``gradient_as_bucket_view`` is off),
    kept for all-reducing; 0 for another wrapper. Reported beside the training state, not in it."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return 0
    sizes = model._get_ddp_logging_data().get("bucket_sizes", "")
    return sum(int(size) for size in str(sizes).split(",") if size.strip())


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


def _launch(worker: Any, run_id: str, tmp: str) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=run_id, max_restarts=0,
                          start_method="spawn", monitor_interval=0.1)
    elastic_launch(launch, worker)(tmp)


def memory() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        _launch(memory_worker, "bench-memory", tmp)
        ranks = [json.loads(Path(tmp, f"memory_{r}.json").read_text()) for r in (0, 1)]
    worst = {name: max(r[name]["total"] for r in ranks) for name in ("ddp", "fsdp")}
    return {"model": f"{MEMORY_MODEL} {MEMORY_KWARGS} @ 32 px", "per_rank": ranks,
            "ratio": worst["fsdp"] / worst["ddp"]}


# ---------------------------------------------------------------- DeepSpeed

# name -> (strategy, TrainConfig options)
DS_CASES = {
    "ddp": ("ddp", {}),
    "zero2": ("deepspeed", {"zero_stage": 2}),
    "zero3": ("deepspeed", {"zero_stage": 3}),
    "zero3-offload-optimizer": ("deepspeed", {"zero_stage": 3, "offload": "optimizer"}),
}


def _storages(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Tensors held in an object's attributes, lists and dicts (a ZeRO optimizer's buffers)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 3:
        return []
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _storages(v, depth + 1)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _storages(v, depth + 1)]
    return []


def ds_state_bytes(trainer: Any) -> dict[str, Any]:
    """Per-rank bytes of a DeepSpeed engine, each storage counted once, with gradients alive (before a step).

    params: the module's weights this rank holds (ZeRO-3: its partition; parameters under DeepSpeed's
    persistence threshold stay whole); optimizer: AdamW's moments and the fp32 master partition it
    updates (ZeRO-3 in fp32: the module's partition itself, counted once, under params); grads: every
    other tensor of the ZeRO optimizer (gradient partitions). comm_buffers, beside the total as DDP's
    buckets are: the gradient bucket(s) DeepSpeed reduces from (``reduce_bucket_size`` elements each).
    """
    engine = trainer.strategy.engine
    counted: dict[int, str] = {}
    sizes = {"params": 0, "grads": 0, "optimizer": 0}
    devices: dict[str, int] = {}

    def add(kind: str, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() == 0 or storage.data_ptr() in counted:
            return
        counted[storage.data_ptr()] = kind
        sizes[kind] += storage.nbytes()
        devices[str(t.device)] = devices.get(str(t.device), 0) + storage.nbytes()

    for p in engine.module.parameters():
        partitioned = hasattr(p, "ds_tensor") and not getattr(p, "ds_persist", False)
        add("params", p.ds_tensor if partitioned else p.data)
    client = engine.client_optimizer
    # ZeRO-3 puts each fp32 partition into the param groups only while stepping it: the state's keys hold them
    for p, state in client.state.items():
        add("optimizer", p)
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                add("optimizer", v)
    for group in client.param_groups:
        for p in group["params"]:
            add("optimizer", p)
    for name, value in vars(engine.optimizer).items():
        if name != "optimizer":
            for t in _storages(value):
                add("grads", t)
    # ZeRO-3 holds one buffer per bucket, ZeRO-1/2 a list of them (two while overlap_comm alternates)
    buffers = [t for b in getattr(engine.optimizer, "ipg_buckets", {}).values() for t in _storages(b.buffer)]
    comm = sum(t.untyped_storage().nbytes() for t in buffers)
    return {**sizes, "total": sum(sizes.values()), "comm_buffers": comm, "by_device": devices}


def _hold_step(strategy: Any) -> Any:
    """Run the next train_step's forward and backward but not the optimizer step: gradients stay alive."""
    real = strategy.optimizer_step
    strategy.optimizer_step = lambda *args: 0.0
    return real


@record
def deepspeed_worker(out: str) -> None:
    import statistics
    import time

    from zoo.train import batches
    from zoo.train.worker import start_strategy

    steps, rounds = int(os.environ["BENCH_STEPS"]), int(os.environ["BENCH_ROUNDS"])
    results: dict[str, Any] = {}
    trainers, data, strategy = {}, None, None
    for precision in ("fp32", "bf16"):
        for name, (kind, options) in DS_CASES.items():
            config = _config(MEMORY_MODEL, out, strategy=kind, nproc=2, model_kwargs=MEMORY_KWARGS,
                             precision=precision, **options)
            strategy = start_strategy(config)
            trainer, data = _build(config, strategy, data)
            plan = batches.epoch_steps(len(data[1].train), BATCH, 1, 0, 0)
            trainer.train_step(plan[0])  # the optimizer state exists from here on
            if kind == "ddp":
                trainer.optimizer.zero_grad = lambda set_to_none=True: None  # keep grads for counting
                trainer.train_step(plan[1])
                results[f"{name}-{precision}"] = state_bytes(trainer)
            else:
                real = _hold_step(strategy)
                trainer.train_step(plan[1])
                results[f"{name}-{precision}"] = ds_state_bytes(trainer)
                strategy.optimizer_step = real
                trainer.strategy.engine.step()  # finish the held step: its gradients are released
            if precision == "fp32" and name != "zero3-offload-optimizer":
                # ZeRO-3 replaces torch's F.linear process-wide ("memory_efficient_linear"): each case is
                # timed with the F.linear it has in a process of its own, as under zoo finetune
                trainers[name] = (trainer, plan, F.linear)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):  # interleaved: background load on a shared machine hits each alike
        for name, (trainer, plan, linear) in trainers.items():
            F.linear = linear
            trainer.train_step(plan[0])  # warm-up
            start = time.perf_counter()
            for micro in plan[1:steps + 1]:
                trainer.train_step(micro)
            rates[name].append(steps * BATCH / (time.perf_counter() - start))
    results["samples_per_s"] = rates
    results["median_samples_per_s"] = {name: statistics.median(r) for name, r in rates.items()}
    Path(out, f"deepspeed_{strategy.rank}.json").write_text(json.dumps(results))
    strategy.close()


def deepspeed_bench(steps: int, rounds: int) -> dict[str, Any]:
    os.environ.update(BENCH_STEPS=str(steps), BENCH_ROUNDS=str(rounds))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        _launch(deepspeed_worker, "bench-deepspeed", tmp)
        ranks = [json.loads(Path(tmp, f"deepspeed_{r}.json").read_text()) for r in (0, 1)]
    cases = [k for k in ranks[0] if k.endswith(("-fp32", "-bf16"))]
    worst = {k: max(r[k]["total"] for r in ranks) for k in cases}
    ratios = {k: worst[k] / worst[f"ddp-{k.rsplit('-', 1)[1]}"] for k in cases}
    speed = ranks[0]["median_samples_per_s"]
    return {"model": f"{MEMORY_MODEL} {MEMORY_KWARGS} @ 32 px, batch {BATCH}", "per_rank": ranks,
            "memory_ratio_to_ddp": ratios,
            "throughput_ratio_to_ddp": {k: v / speed["ddp"] for k, v in speed.items() if k != "ddp"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("throughput", "memory", "deepspeed"),
                        help="Run one part; the others' figures in the results file are kept.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory workers inherit it
    parts = {"throughput": lambda: throughput(args.steps, args.rounds), "memory": memory,
             "deepspeed": lambda: deepspeed_bench(args.steps, args.rounds)}
    out = ROOT / "benchmarks" / "results" / "finetune.json"
    result = json.loads(out.read_text()) if args.only and out.is_file() else {}
    for name, run in parts.items():
        if args.only in (None, name):
            result[name] = run()
    machine = machine_info(threads=args.threads)
    if args.only:  # the other parts keep the machine state they were measured in
        result[args.only]["machine"] = machine
    else:
        result["machine"] = machine
    out.write_text(json.dumps(result, indent=2))
    if args.only in (None, "throughput"):
        print(f"throughput zoo / bare loop: {result['throughput']['ratio']:.3f} (target >= 0.95)")
    if args.only in (None, "memory"):
        print(f"per-rank training state FSDP / DDP: {result['memory']['ratio']:.3f} (target <= 0.55)")
    if args.only in (None, "deepspeed"):
        for case, ratio in result["deepspeed"]["memory_ratio_to_ddp"].items():
            print(f"per-rank training state {case} / ddp: {ratio:.3f} (target for zero3: <= 0.55)")
        for case, ratio in result["deepspeed"]["throughput_ratio_to_ddp"].items():
            print(f"samples/s {case} / ddp (fp32, N=2): {ratio:.3f} (target >= 0.8)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
