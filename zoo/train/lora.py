"""LoRA through ``peft``: the adapters a run trains, and the merged model it writes.

    zoo finetune ./my-llama --data builtin:next-letter --lora-r 8 --lora-alpha 16 --out runs/lora

Only the adapters' weights train (the base is frozen). The run dir holds the adapter
(``adapter/``, peft's ``save_pretrained``: loadable with ``PeftModel.from_pretrained``)
and the merged model (``model/``, a plain save_pretrained folder that ``zoo export RUN``
exports). The merge is checked: the merged model must give the logits the adapted model
gave on a validation batch, so a merge that lost the ``alpha / r`` scaling (or any other
part of the update) is refused before anything is written, rather than exported and
verified against itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError, VerificationError

ADAPTER_DIR = "adapter"
MERGE_TOLERANCE = 1e-4  # of the largest logit: float rounding of W + s * B @ A against W x + s * B (A x)


def add_adapters(model: nn.Module, config: Any) -> nn.Module:
    """``model`` with LoRA adapters on ``--lora-targets`` (default: peft's choice for the architecture)."""
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()] if config.lora_targets else None
    settings = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets[0] if targets == ["all-linear"] else targets)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated name (is_gradient_checkpointing)
            warnings.filterwarnings("ignore", category=FutureWarning)
            return get_peft_model(model, settings)
    except ValueError as exc:
        shown = config.lora_targets or "peft's default for this architecture"
        raise ConfigError(f"--lora-targets {shown}: {str(exc).splitlines()[0]}; name the model's linear layers "
                          "(e.g. q_proj,v_proj) or give all-linear") from exc


def merge(model: nn.Module, sample: dict[str, torch.Tensor]) -> nn.Module:
    """The base model with the adapters folded into its weights, checked on ``sample`` (model inputs)."""
    model.eval()
    with torch.no_grad():
        before = model(**sample, use_cache=False).logits
        merged = fold(model)
        after = merged(**sample, use_cache=False).logits
    error = float((after - before).abs().max())
    limit = MERGE_TOLERANCE * max(1.0, float(before.abs().max()))
    if not error <= limit:
        raise VerificationError(f"merging the LoRA adapters changed the model's logits by up to {error:.3g} "
                                f"(allowed {limit:.3g}): the merged model is not the trained one; nothing was "
                                "written to model/")
    return merged


def fold(model: nn.Module) -> nn.Module:
    """peft's merge: W + (alpha / r) * B @ A in every adapted layer, the adapters removed."""
    return model.merge_and_unload()
