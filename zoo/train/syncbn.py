"""Batch norm over the global batch for DDP/FSDP: torch's SyncBatchNorm, and its arithmetic on CPU.

On CUDA, ``convert_sync_batchnorm`` is timm's converter (it also converts timm's
BatchNormAct layers, keeping their activation) to torch's ``SyncBatchNorm``.
torch runs that layer on CUDA only: its statistics kernels (``batch_norm_stats``
and friends) have no CPU implementation, and DDP refuses SyncBatchNorm in a CPU
module. So on CPU (gloo) each batch-norm layer keeps its class and gains
``GlobalBatchNorm``'s training forward: the same statistics, computed with
autograd-aware all-reduces. Either way each rank normalises with the mean and
variance of the whole global batch, the numbers one process computes over it.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            module.__class__ = _global_class(type(module))
    return model


@functools.cache
def _global_class(cls: type) -> type:
    """``cls`` with GlobalBatchNorm's training forward in front.

    Swapping the class of an existing layer keeps its parameters, buffers and hooks
    exactly as they are (the new class adds a method, no state).
    """
    return type(f"Global{cls.__name__}", (GlobalBatchNorm, cls), {})


class GlobalBatchNorm(nn.Module):
    """Mixin over a batch-norm class: training statistics over every rank's rows."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        out = _global_batch_norm(self, input)
        # timm's BatchNormAct2d: dropout and activation after the norm (as timm's SyncBatchNormAct does)
        for after in ("drop", "act"):
            if isinstance(getattr(self, after, None), nn.Module):
                out = getattr(self, after)(out)
        return out


def _global_batch_norm(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm with the global batch's statistics (two passes, as F.batch_norm does)."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    values = x.float()  # statistics in fp32 whatever the compute precision
    local = torch.tensor([values.numel() / values.shape[1]], dtype=torch.float32, device=x.device)
    count = _sum(local)  # rows x positions over all ranks
    mean = _sum(values.sum(dims)) / count
    centred = values - mean.view(shape)
    var = _sum((centred * centred).sum(dims)) / count  # biased: what normalisation uses
    if bn.track_running_stats and bn.running_mean is not None:
        _update_running(bn, mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.float().view(shape) + bn.bias.float().view(shape)
    return out.to(x.dtype)


def _sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks; autograd-aware (its backward sums the gradients over ranks the same way)."""
    import torch.distributed._functional_collectives as funcol

    return funcol.wait_tensor(funcol.all_reduce(values, "sum", dist.group.WORLD))


@torch.no_grad()
def _update_running(bn: nn.Module, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
    bn.running_var.mul_(1 - momentum).add_(unbiased_var.to(bn.running_var.dtype), alpha=momentum)
