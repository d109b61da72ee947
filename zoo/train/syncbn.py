"""Batch norm over the global batch for DDP/FSDP: torch's SyncBatchNorm, and its arithmetic on CPU.

``convert_sync_batchnorm`` is timm's converter (it also converts timm's
BatchNormAct layers, keeping their activation), giving torch's ``SyncBatchNorm``.
torch runs that layer on CUDA only (its statistics kernels, ``batch_norm_stats``
and friends, have no CPU implementation, and it refuses CPU tensors), so on CPU
(gloo) the converted layers also get ``GlooSyncBatchNorm``'s forward: the same
statistics, computed with autograd-aware all-reduces. Either way each rank
normalises with the mean and variance of the whole global batch, the numbers a
single process computes over that batch.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    from timm.layers import convert_sync_batchnorm as timm_convert

    model = timm_convert(model)
    if device.type == "cpu":
        for module in model.modules():
            if isinstance(module, nn.SyncBatchNorm) and not isinstance(module, GlooSyncBatchNorm):
                module.__class__ = _gloo_class(type(module))
    return model


@functools.cache
def _gloo_class(cls: type) -> type:
    """``cls`` with GlooSyncBatchNorm's forward under its own (timm's SyncBatchNormAct calls super().forward).

    Swapping the class of an existing layer keeps its parameters and buffers as they
    are; both classes share SyncBatchNorm's state exactly.
    """
    if cls is nn.SyncBatchNorm:
        return GlooSyncBatchNorm
    return type(f"Gloo{cls.__name__}", (cls, GlooSyncBatchNorm), {})


class GlooSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm whose training forward also works on CPU tensors (gloo)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if input.is_cuda or not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        return _global_batch_norm(self, input, group)


def _global_batch_norm(bn: nn.SyncBatchNorm, x: torch.Tensor, group: object) -> torch.Tensor:
    """Training-mode batch norm with the global batch's statistics (two passes, as F.batch_norm does)."""
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    values = x.float()  # statistics in fp32 whatever the compute precision
    local = torch.tensor([values.numel() / values.shape[1]], dtype=torch.float32)
    count = all_reduce(local, group=group)  # rows x positions over all ranks
    mean = all_reduce(values.sum(dims), group=group) / count
    centred = values - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims), group=group) / count  # biased: what normalisation uses
    if bn.track_running_stats:
        _update_running(bn, mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.float().view(shape) + bn.bias.float().view(shape)
    return out.to(x.dtype)


@torch.no_grad()
def _update_running(bn: nn.SyncBatchNorm, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
    bn.running_var.mul_(1 - momentum).add_(unbiased_var.to(bn.running_var.dtype), alpha=momentum)
