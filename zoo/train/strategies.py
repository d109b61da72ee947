"""How a model is spread over processes: one small interface, three implementations.

The training loop calls only these methods and never asks which strategy it
has (torchtune's ``shard_model`` and nanoGPT's ``master_process`` fence
distributed code the same way).

- ``SingleStrategy``: one process, no process group.
- ``DDPStrategy``: a full replica per rank, gradients all-reduced (DistributedDataParallel).
- ``FSDPStrategy``: FSDP2 ``fully_shard`` per block, then the root; parameters,
  gradients and optimizer state are sharded over the ranks as DTensors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SingleStrategy:
    name = "single"

    def __init__(self, precision: str = "fp32", sync_batchnorm: bool = True):
        self.precision = precision
        self.sync_batchnorm = sync_batchnorm
        self.synced_batchnorm = False  # set by wrap when batch-norm layers were made to sync
        self.rank, self.local_rank, self.world_size = _ranks()
        self.device = _device(self.local_rank)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        """Start the process group (distributed strategies only)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def client_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """The optimizer ``wrap`` already built with the model (DeepSpeed's engine needs it); None: the loop's."""
        return None

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient exchange on non-final micro-steps of gradient accumulation."""
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AMP_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        """Unscale, clip to ``max_norm`` (0: no clipping) and step; returns the gradient norm before clipping."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        norm = self.clip_gradients([p for p in model.parameters() if p.grad is not None], max_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def clip_gradients(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """The global gradient norm; the gradients scaled down to ``max_norm`` when it is larger (0: never)."""
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # sharded grads: a DTensor norm
        if max_norm > 0:  # clip_grads_with_norm_ scales each parameter's .grad (given tensors, it does nothing)
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def gather(self, records: list[Any]) -> list[Any]:
        """Every rank's records, concatenated in rank order (on every rank)."""
        return list(records)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, shared so that every rank stops (or not) together."""
        return flag

    def barrier(self) -> None:
        """Wait for every rank."""

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full, unsharded CPU weights on rank 0 (empty elsewhere), via torch's state-dict API."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)

    def close(self) -> None:
        """Leave the process group."""


class DDPStrategy(SingleStrategy):
    name = "ddp"

    def setup(self) -> None:
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=self.device if self.device.type == "cuda" else None)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        model = self.sync_norms(model).to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_norms(self, model: nn.Module) -> nn.Module:
        """Batch norm over the global batch (on by default): each rank would otherwise normalise its own
        share with its own statistics, and the result would depend on the number of processes."""
        if not (self.sync_batchnorm and self.world_size > 1 and _has_batch_norm(model)):
            return model
        from zoo.train.syncbn import convert_sync_batchnorm

        self.synced_batchnorm = True
        return convert_sync_batchnorm(model, self.device)

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if enabled else model.no_sync()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def gather(self, records: list[Any]) -> list[Any]:
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(records))
        return [record for part in parts for record in part]

    def agree(self, flag: bool) -> bool:
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class FSDPStrategy(DDPStrategy):
    name = "fsdp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh

        model = self.sync_norms(model).to(self.device)
        return shard_fully(model, init_device_mesh(self.device.type, (self.world_size,)), self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the mixed-precision policy casts instead

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return fsdp_gradient_sync(model, enabled)


def shard_fully(model: nn.Module, mesh: Any, precision: str) -> nn.Module:
    """FSDP2 over ``mesh``: ``fully_shard`` on each block (``shard_units``), then on the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _quiet_view_warning()
    kwargs: dict[str, Any] = {"mesh": mesh}
    if precision == "bf16":
        # fp32 master weights stay sharded; compute in bf16, reduce gradients in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # batch norm keeps fp32 weights: its running statistics are fp32 buffers (FSDP casts parameters,
        # never buffers), and batch_norm refuses bf16 weights beside fp32 statistics ("expected scalar
        # type BFloat16 but found Float"); with fp32 weights it takes the bf16 input and returns bf16
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for norm in _batch_norms(model):
            fully_shard(norm, mesh=mesh, mp_policy=fp32)
    for block in shard_units(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _quiet_view_warning() -> None:
    """Silence FSDP2's "returned a view tensor" warning, which is harmless for zoo's training.

    Cause: nn.Linear on a 3-d input (token classification's [batch, sequence, hidden])
    computes addmm on a flattened view and returns the result reshaped, i.e. a view,
    and FSDP2 warns about any view its root returns, because an in-place op on that
    view would skip the hook that re-gathers parameters for backward. The tasks'
    training_loss / eval_batch use the logits out of place only (float, reshape,
    cross_entropy), and tests/test_train_parity.py shows FSDP token classification
    taking the same steps as one process.
    """
    import warnings

    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor",
                            category=UserWarning)


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers with weights (affine)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and
            any(True for _ in m.parameters(recurse=False))]


@contextlib.contextmanager
def fsdp_gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    model.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks that get their own FSDP group: HF ``_no_split_modules`` classes, timm blocks/stages.

    A block that shares a parameter with the rest of the model (tied weights)
    stays in its parent's group, so a tied pair is never split across groups.
    """
    names = set(_no_split_names(model))
    if names:
        units = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    else:
        units = _timm_blocks(model)
    tied = _tied_parameter_ids(model)
    return [u for u in units if not any(id(p) in tied for p in u.parameters())]


def _no_split_names(model: nn.Module) -> list[str]:
    found: list[str] = []
    for module in model.modules():
        found.extend(getattr(module, "_no_split_modules", None) or [])
    return found


def _timm_blocks(model: nn.Module) -> list[nn.Module]:
    for attr in ("blocks", "stages", "layers"):
        container = getattr(model, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
            return list(container)
    # torchvision-style ResNets (timm's resnet): layer1..layer4
    return [m for n, m in model.named_children() if n.startswith("layer") and n[5:].isdigit()]


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


def _ranks() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


STRATEGY_CLASSES = {"single": SingleStrategy, "ddp": DDPStrategy, "fsdp": FSDPStrategy}


def make_strategy(name: str, precision: str = "fp32", *, sync_batchnorm: bool = True) -> SingleStrategy:
    """A started strategy (its process group initialised)."""
    strategy = STRATEGY_CLASSES[name](precision, sync_batchnorm)
    strategy.setup()
    return strategy
