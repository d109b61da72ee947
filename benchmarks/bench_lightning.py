"""Lightning with ZooModule against zoo's own training loop: throughput on the same model, data, batch and steps.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_lightning.py [--steps 20] [--rounds 5] [--threads 1]

One process, CPU. zoo's side is ``zoo.train.loop.Trainer.train_step`` with the single strategy (what
``zoo finetune`` runs); Lightning's is ``Trainer.fit`` of a ``ZooModule("timm:test_resnet",
random_init=True, image_size=32)`` on ``ZooDataModule("builtin:digits", batch_size=64, image_size=32)``,
no logger, checkpointing, progress bar or validation. Each round times ``--steps`` optimizer steps after
one warm-up step (Lightning: from the end of its first batch to the end of its last, so its per-fit setup
is not counted). Rounds alternate zoo / Lightning so background load on a shared machine hits both alike;
the ratio is of the medians (the best rounds' ratio is reported too). Target: Lightning >= 0.9 x zoo.

Writes benchmarks/results/lightning.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from bench_finetune import BATCH, _build, _config
from machine import machine_info
from train_rounds import zoo_round

MODEL = "timm:test_resnet"


class _StepClock:
    """A Lightning callback: the time from the end of the first training batch to the end of the last."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        outer = self

        class Clock(pl.Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                outer.marks.append(time.perf_counter())

        self.callback = Clock()
        self.marks: list[float] = []


def lightning_round(module: Any, data: Any, steps: int) -> float:
    """Samples a second through Lightning's fit of ``module``, after one warm-up step."""
    from lightning.pytorch import Trainer

    clock = _StepClock()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[clock.callback])
    trainer.fit(module, datamodule=data)
    return steps * BATCH / (clock.marks[-1] - clock.marks[0])


def throughput(steps: int, rounds: int) -> dict[str, Any]:
    from zoo.lightning import ZooDataModule, ZooModule
    from zoo.train import batches
    from zoo.train.strategies import SingleStrategy

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(MODEL, tmp)
        zoo_trainer, data = _build(config, SingleStrategy())
        plan = batches.epoch_steps(len(data[1].train), BATCH, 1, 0, 0)
        if steps + 1 > len(plan):  # both sides time one epoch's steps: no epoch boundary inside a round
            raise SystemExit(f"--steps {steps} is more than the {len(plan) - 1} timed steps one epoch holds")
        module = ZooModule(MODEL, random_init=True, image_size=32, lr=config.lr)
        datamodule = ZooDataModule("builtin:digits", batch_size=BATCH, image_size=32)
        zoo_rates, lightning_rates = [], []
        for _ in range(rounds):
            zoo_rates.append(zoo_round(zoo_trainer, plan, steps, BATCH))
            lightning_rates.append(lightning_round(module, datamodule, steps))
    return {"model": f"{MODEL} @ 32 px, 10 classes, random init", "data": "builtin:digits", "batch": BATCH,
            "steps_per_round": steps, "zoo_samples_per_s": zoo_rates, "lightning_samples_per_s": lightning_rates,
            "ratio_median": statistics.median(lightning_rates) / statistics.median(zoo_rates),
            "ratio_best": max(lightning_rates) / max(zoo_rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine_info(threads=args.threads), "throughput": throughput(args.steps, args.rounds)}
    out = ROOT / "benchmarks" / "results" / "lightning.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"throughput Lightning (ZooModule) / zoo's loop: {result['throughput']['ratio_median']:.3f} median, "
          f"{result['throughput']['ratio_best']:.3f} best rounds (target >= 0.9)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
