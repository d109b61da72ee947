"""zoo's training step against the loop a user writes by hand, in alternating timed rounds (bench_finetune*.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def zoo_round(trainer: Any, plan: list, steps: int, batch_size: int) -> float:
    """Samples a second through ``Trainer.train_step``, after one warm-up step."""
    trainer.train_step(plan[0])  # warm-up
    start = time.perf_counter()
    for micro in plan[1:steps + 1]:
        trainer.train_step(micro)
        trainer.state.step += 1
    return steps * batch_size / (time.perf_counter() - start)


def bare_round(trainer: Any, plan: list, steps: int, batch_size: int,
               loss_of: Callable[[Any, dict[str, Any]], Any]) -> float:
    """Samples a second through the hand-written loop: ``loss_of(model, batch)``, backward, clip, AdamW, schedule."""
    model, optimizer, scheduler, data = trainer.model, trainer.optimizer, trainer.scheduler, trainer.data.train

    def step(indices: list[int]) -> None:
        loss = loss_of(model, data.batch(indices))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    step(plan[0][0])
    start = time.perf_counter()
    for micro in plan[1:steps + 1]:
        step(micro[0])
    return steps * batch_size / (time.perf_counter() - start)


def compare_rounds(zoo_trainer: Any, bare_trainer: Any, plan: list, steps: int, rounds: int, batch_size: int,
                   loss_of: Callable[[Any, dict[str, Any]], Any]) -> dict[str, Any]:
    """Alternating zoo / bare rounds; the ratio of the best of each (the least disturbed by a shared machine)."""
    zoo_rates, bare_rates = [], []
    for _ in range(rounds):
        zoo_rates.append(zoo_round(zoo_trainer, plan, steps, batch_size))
        bare_rates.append(bare_round(bare_trainer, plan, steps, batch_size, loss_of))
    return {"batch": batch_size, "steps_per_round": steps, "zoo_samples_per_s": zoo_rates,
            "bare_samples_per_s": bare_rates, "ratio": max(zoo_rates) / max(bare_rates)}
