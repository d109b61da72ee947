"""Seeded data order: which samples each rank sees at each micro-step.

``--batch-size`` is the *global* micro-batch (summed over ranks), so the data a
step sees depends only on (seed, epoch, step), never on the number of
processes: DDP/FSDP steps see exactly the samples a single-process step sees,
and a run resumed with another ``--nproc`` continues with the same order.
"""

from __future__ import annotations

import torch


def epoch_steps(n: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch, each a list of ``grad_accum`` global micro-batches of indices.

    The last incomplete micro-batch (and incomplete accumulation group) is dropped,
    so every step has the same size on every rank.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    micro = [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro) - grad_accum + 1, grad_accum)]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int) -> int:
    return (n // batch_size) // grad_accum


def local_part(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a global batch (the batch size divides evenly)."""
    share = len(indices) // world_size
    return indices[rank * share:(rank + 1) * share]


def eval_shard(n: int, rank: int, world_size: int) -> tuple[list[int], list[bool]]:
    """This rank's validation indices, padded so every rank runs the same number of forwards.

    FSDP gathers parameters in each forward: a rank that ran one forward fewer
    would hang the others. Padding rows repeat index 0 and are masked out.
    """
    per_rank = -(-n // world_size)
    positions = range(rank * per_rank, (rank + 1) * per_rank)
    return [p if p < n else 0 for p in positions], [p < n for p in positions]


def micro_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """RNG seed (dropout, augmentation) of one micro-step: a resumed run redraws exactly the same numbers."""
    return (seed * 1_000_003 + step * 1_009 + micro * 101 + rank) % (2**63)
