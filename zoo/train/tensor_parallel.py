"""Tensor parallelism (``--tp N``) for causal LMs: each decoder layer's projections split over N processes.

    zoo finetune ./my-llama --data builtin:next-letter --tp 2 --nproc 2 --out runs/tp
    zoo finetune ./my-llama --data builtin:next-letter --tp 2 --nproc 4 --out runs/fsdp-tp

torch's own ``torch.distributed.tensor.parallel`` does the work (Megatron's layout): in
every decoder layer q/k/v and the MLP's gate/up are split by output features (colwise:
each rank computes its share of the attention heads and of the hidden units), o and down
by input features (rowwise: each rank's partial sum, added up across ranks). Embeddings,
norms and the LM head stay whole within a split model. The plan is the one transformers
declares for the architecture (``config.base_model_tp_plan``), taken only when it is
exactly this Llama-style plan: Llama, Qwen2, Mistral, Gemma ... qualify; GPT-2 (one fused
Conv1D for q/k/v) and plans with other styles (fused qkv, per-head norms) are refused
before launch.

The processes form a 2-D mesh, data x tp (torch's FSDP + TP recipe): the N processes of
one split model (neighbouring ranks, so on one node) share each batch; with more processes
than N, each group of N takes its share of the global batch, and FSDP2 shards every
weight (split or whole) over the data dimension and averages the gradients across it.

The run dir's model is written whole (every shard gathered) as a plain save_pretrained
folder, so ``zoo export RUN`` exports it as any other run.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zoo.train.strategies import DDPStrategy, fsdp_gradient_sync, shard_fully

# module pattern (under the base model) -> how its weight is split: the plan transformers declares for Llama
LLAMA_STYLE_PLAN = {
    "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise", "layers.*.mlp.down_proj": "rowwise",
}


def sharding_plan(model: nn.Module) -> dict[str, str]:
    """Every module to split, by its name in ``model``: ``{"model.layers.0.self_attn.q_proj": "colwise", ...}``.

    Raises ValueError (its text says why) when the architecture's declared plan is not the Llama-style one or a
    pattern does not name one linear layer in every decoder layer.
    """
    config = model.config
    declared = dict(getattr(config, "base_model_tp_plan", None) or {})
    if declared != LLAMA_STYLE_PLAN:
        shown = ", ".join(f"{k}: {v}" for k, v in declared.items()) or "none"
        raise ValueError(f"the {config.model_type} architecture does not split as Llama does (transformers' plan "
                         f"for it: {shown}); --tp shards Llama-style models (separate q/k/v/o and gate/up/down "
                         "projections: Llama, Qwen2, Mistral, Gemma)")
    layers = int(config.num_hidden_layers)
    plan: dict[str, str] = {}
    for pattern, style in LLAMA_STYLE_PLAN.items():
        found = re.compile(r"(^|\.)" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
        names = [n for n, m in model.named_modules() if found.search(n) and isinstance(m, nn.Linear)]
        if len(names) != layers:
            raise ValueError(f"{config.model_type}: {pattern} names {len(names)} linear layers, not one in each of "
                             f"its {layers} decoder layers")
        plan.update(dict.fromkeys(names, style))
    return plan


def split_problems(model: nn.Module, tp: int) -> list[str]:
    """What keeps ``model`` from splitting into ``tp`` shards along whole attention heads and hidden units.

    Heads and hidden units that divide make every split width divide: q/o are heads x head size, k/v
    key/value heads x head size, gate/up/down the MLP's hidden units.
    """
    try:
        sharding_plan(model)
    except ValueError as exc:
        return [str(exc)]
    config, out = model.config, []
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    for what, count in (("attention heads", heads), ("key/value heads", kv_heads),
                        ("MLP hidden units (intermediate_size)", int(config.intermediate_size))):
        if count % tp:
            out.append(f"its {count} {what} do not divide by --tp {tp}")
    return out


def problems(config: Any, spec: Any) -> list[str]:
    """Every reason ``--tp`` cannot run this way, at once (before launch): options, task, architecture."""
    tp = config.tp
    if tp == 1:
        return []
    from zoo.tasks import get_task

    out = []
    world = config.nproc * config.nnodes
    if world % tp:
        out.append(f"--tp {tp} needs a multiple of {tp} processes (each group of {tp} holds one split model), but "
                   f"--nproc {config.nproc} --nnodes {config.nnodes} start {world}; give --nproc {tp} (or "
                   f"{2 * tp}: FSDP shards the data dimension across the groups)")
    if config.strategy not in ("single", "fsdp"):
        out.append(f"--tp combines with FSDP only (data x tp mesh), not --strategy {config.strategy}; leave "
                   "--strategy out or give --strategy fsdp")
    if config.lora_r is not None:
        out.append("--tp does not train LoRA adapters (peft's layers wrap the projections --tp splits); "
                   "leave --lora-r out, or train LoRA with --strategy ddp or fsdp")
    if config.precision == "fp16":
        out.append("--tp refuses --precision fp16 (its loss scaler is not tested on split weights); "
                   "use --precision bf16 or fp32")
    task = get_task(spec.task)
    if not task.generates:
        out.append(f"--tp splits causal language models, but {spec.name} is a {spec.task} model")
    else:
        out += [f"{spec.name}: {p}" for p in split_problems(meta_model(spec), tp)]
    return out


def meta_model(spec: Any) -> nn.Module:
    """The model's modules without weights (on the meta device): enough to plan the split."""
    import transformers

    from zoo import sources

    folder = sources.for_spec(spec).local_folder(spec)
    config = transformers.AutoConfig.from_pretrained(folder or spec.source_id)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def start_strategy(precision: str, tp: int) -> TensorParallelStrategy:
    """A started TensorParallelStrategy (its process group initialised)."""
    strategy = TensorParallelStrategy(precision, sync_batchnorm=False)  # Llama-style models have no batch norm
    strategy.tp = tp
    strategy.setup()
    return strategy


class TensorParallelStrategy(DDPStrategy):
    """Every process holds one shard of each split projection; the ``tp`` processes of one split model see
    the same batch.

    To the training loop the data dimension is what counts: ``rank`` and ``world_size`` are this
    process's place among the groups (0 of 1 with no data parallelism: each process takes the whole
    global batch, the same dropout seeds and the same loss), while ``process_rank`` says which
    process writes the run dir.
    """

    name = "tp"
    tp = 1

    def setup(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        super().setup()
        self.process_rank, groups = self.rank, self.world_size // self.tp
        self.mesh = init_device_mesh(self.device.type, (groups, self.tp), mesh_dim_names=("data", "tp"))
        self.rank, self.world_size = self.mesh.get_local_rank("data"), groups
        if groups > 1:
            self.name = "fsdp+tp"

    @property
    def is_main(self) -> bool:
        return self.process_rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        model = model.to(self.device)
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        plan = {name: styles[style]() for name, style in sharding_plan(model).items()}
        model = parallelize_module(model, self.mesh["tp"], plan)
        return shard_fully(model, self.mesh["data"], self.precision) if self.world_size > 1 else model

    def autocast(self) -> contextlib.AbstractContextManager:
        # with FSDP the mixed-precision policy casts (as FSDPStrategy); a lone split model autocasts
        return contextlib.nullcontext() if self.world_size > 1 else super().autocast()

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        if self.world_size > 1:
            return fsdp_gradient_sync(model, enabled)
        return contextlib.nullcontext()  # no replicas: the split layers' collectives are in forward and backward

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values  # every process computed the whole batch's numbers
        values = values.to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.mesh["data"].get_group())
        return values.cpu()

    def gather(self, records: list[Any]) -> list[Any]:
        if self.world_size == 1:
            return list(records)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(records), group=self.mesh["data"].get_group())
        return [record for part in parts for record in part]

    def clip_gradients(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """torch's norm and clipping take gradients on different meshes apart (split ones live on the tp or
        data x tp mesh, whole ones on the data mesh or none): each group alone, then one norm."""
        from torch.distributed.tensor import DTensor

        groups: dict[Any, list[nn.Parameter]] = {}
        for p in params:
            mesh = p.grad.device_mesh.mesh_dim_names if isinstance(p.grad, DTensor) else None
            groups.setdefault(mesh, []).append(p)
        norms = [torch.nn.utils.get_total_norm([p.grad for p in group]) for group in groups.values()]
        norm = torch.stack([n.full_tensor() if isinstance(n, DTensor) else n for n in norms]).norm()
        if max_norm > 0:
            for group in groups.values():
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
        return norm
