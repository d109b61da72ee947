"""``--strategy deepspeed``: DeepSpeed ZeRO stages 1-3, optionally offloading to CPU, behind zoo's Strategy.

- ZeRO-1 shards the optimizer state over the ranks, ZeRO-2 also the gradients, ZeRO-3 also the
  parameters (gathered layer by layer for forward and backward); ``--offload optimizer`` keeps the
  optimizer state and its fp32 master weights in CPU memory, ``--offload params`` (ZeRO-3 only) the
  parameters as well.
- zoo's own AdamW (its weight-decay groups and learning rate) goes to ``deepspeed.initialize`` as a
  client optimizer, and zoo's LambdaLR schedules that optimizer's learning rate. The DeepSpeed config
  then holds no optimizer or scheduler section: the same update rule, warmup and decay as every other
  strategy, so equal options give equal training whatever the strategy.
- zoo's loop keeps deciding when an optimizer step ends ("managed_gradient_accumulation": false):
  it calls ``engine.backward`` on each micro-step, already scaled to the global batch mean, and
  ``engine.step`` once per optimizer step; DeepSpeed clips (``gradient_clipping``) and averages over ranks.
- ``--precision bf16`` is DeepSpeed's bf16 mode: bf16 parameters and gradients, fp32 master weights
  in the (sharded) optimizer.
- Checkpoints are DeepSpeed's own, in ``<run>/checkpoints/step_N/deepspeed``; the model written
  to ``<run>/model`` is built from the fp32 master weights gathered from every rank.

DeepSpeed is imported only here and only inside a worker: without CUDA it runs on the CPU with
``DS_ACCELERATOR=cpu`` (set for the user) and gloo.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any

import torch
from torch import nn

from zoo.train.strategies import DDPStrategy

DEFAULT_STAGE = 2
# DeepSpeed's default reduce_bucket_size, in elements: the gradient bucket every rank allocates (2 GB in fp32)
DEEPSPEED_BUCKET = 500_000_000


class DeepSpeedStrategy(DDPStrategy):
    name = "deepspeed"

    def __init__(self, precision: str = "fp32", sync_batchnorm: bool = True, *, config: Any = None):
        super().__init__(precision, sync_batchnorm)
        self.config = config
        self.zero_stage = getattr(config, "zero_stage", None) or DEFAULT_STAGE
        self.offload = getattr(config, "offload", None) or "none"
        self.engine: Any = None

    def setup(self) -> None:
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read once, when deepspeed is first imported
        super().setup()
        import deepspeed

        _quiet_deepspeed()
        # on the CPU DeepSpeed loads (first builds, then caches) its shared-memory all-reduce op, printing
        # that it did on each rank, and torch warns on the way that there is no CUDA: neither is news to the user
        extension_log = logging.getLogger("torch.utils.cpp_extension")
        level = extension_log.level
        extension_log.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo",
                                           dist_init_required=False)
        finally:
            extension_log.setLevel(level)

    def ds_config(self, model: nn.Module) -> dict[str, Any]:
        """The DeepSpeed config for zoo's options (no optimizer/scheduler section: zoo passes its own)."""
        c = self.config
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # the gradient bucket is allocated whole (ZeRO-1/2 on every backward, ZeRO-3 once): no larger than the
        # gradients it can hold, so a model smaller than DeepSpeed's default does not reserve 2 GB per rank for
        # it; the reductions are the same (the whole backward fits one bucket either way)
        zero: dict[str, Any] = {"stage": self.zero_stage, "reduce_bucket_size": max(1, min(DEEPSPEED_BUCKET, trained))}
        if self.offload in ("optimizer", "params"):
            zero["offload_optimizer"] = {"device": "cpu"}
        if self.offload == "params":
            zero["offload_param"] = {"device": "cpu"}
        micro = c.batch_size // self.world_size
        return {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": c.grad_accum,
            "train_batch_size": micro * c.grad_accum * self.world_size,
            "managed_gradient_accumulation": False,
            "gradient_clipping": c.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": self.precision == "bf16"},
            # zoo's torch AdamW also steps the offloaded state (DeepSpeedCPUAdam would need a compiled op)
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 2**31 - 1,
        }

    def wrap(self, model: nn.Module) -> nn.Module:
        import deepspeed

        from zoo.train.loop import adamw

        model = self.sync_norms(model).to(self.device)
        optimizer = adamw(model, self.config)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config(model),
                                               dist_init_required=False)
        if self.precision == "fp32" and self.offload == "none":
            _share_fp32_master(self.engine.optimizer)
        return self.engine

    def client_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        return self.engine.client_optimizer if self.engine is not None else None

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine accumulates until engine.step(), the step's end

    def autocast(self) -> contextlib.AbstractContextManager:
        # bf16 mode: the engine holds bf16 weights; autocast casts the fp32 inputs (pixels, embeddings' masks)
        return super().autocast() if self.precision == "bf16" else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # the loss is already the micro-step's share of the global-batch mean: no division by the steps
        self.engine.backward(loss, scale_wrt_gas=False)

    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        """Reduce, clip (the config's ``gradient_clipping``), step and zero the gradients; the norm before clipping."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every weight in fp32, gathered from the ranks' shards (a collective: every rank calls it).

        Trained parameters come from the optimizer's fp32 master copy (bf16 mode holds bf16 weights in
        the module); frozen ones, which have no master copy, from the module, gathered under ZeRO-3.
        Tied weights appear under each of their names, as the module's own state dict lists them.
        """
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        module = model.module if hasattr(model, "module") else model
        full: dict[int, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for name, value in module.state_dict(keep_vars=True).items():
            if not isinstance(value, nn.Parameter):
                out[name] = value.detach().cpu().clone()
                continue
            if id(value) not in full:
                gathered = safe_get_full_fp32_param(value) if value.requires_grad else None
                if gathered is None:
                    with deepspeed.zero.GatheredParameters([value]):  # a no-op below ZeRO-3
                        gathered = value.detach().clone()
                full[id(value)] = gathered.detach().float().cpu()
            out[name] = full[id(value)]
        return out if self.is_main else {}


def _share_fp32_master(zero: Any) -> None:
    """Make the ZeRO optimizer's fp32 master partitions this rank's own partition of the module's fp32
    weights, not a second copy of it: in fp32 every rank would keep 4 more bytes per parameter of its
    share (at N = 2: ZeRO-3 0.63x DDP's training state instead of 0.50x, ZeRO-2 0.76x instead of 0.63x)
    and copy the one onto the other after every step.

    ZeRO-3 means to alias the two when the weights are already fp32 on the optimizer's device (stage3.py
    ``_create_fp32_partitions``, whose step then copies a tensor onto itself) but compares the partition's
    ``torch.device`` with the accelerator's device name, a string, which is never equal. ZeRO-1/2 always
    clone; their step too ends by copying the master partition into the module's flat buffer, here onto
    itself, before all-gathering the ranks' partitions into it. The master tensors stay the optimizer's
    parameters and state keys: only their storage changes.
    """
    import torch.distributed as dist

    zero3 = hasattr(zero, "fp32_partitioned_groups_flat")
    if zero3:
        pairs = zip(zero.fp32_partitioned_groups_flat, zero.fp16_partitioned_groups_flat)
    else:
        pairs = zip(zero.single_partition_of_fp32_groups,
                    (partitions[dist.get_rank(group=group)] for partitions, group
                     in zip(zero.parallel_partitioned_bit16_groups, zero.real_dp_process_group)))
    for master, module in pairs:
        if module is not None and (master.dtype, master.device, master.shape) == (module.dtype, module.device,
                                                                                 module.shape):
            master.data = module.data
    if not zero3:
        # each parameter's fp32 fragment (what safe_get_full_fp32_param, and so model/, reads) is a view of the
        # master partition taken at init: take it again on the new storage, as DeepSpeed does after a load
        zero._link_all_hp_params()


def _quiet_deepspeed() -> None:
    """DeepSpeed's own chatter, which zoo's run summary replaces."""
    import warnings

    import deepspeed

    # its config and every stage's setup, logged at INFO on each rank
    deepspeed.utils.logger.setLevel(logging.WARNING)
    # DeepSpeed calls torch's collectives by their older names, each call warning that they are deprecated
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                                              "is deprecated", category=FutureWarning)
