"""Cutting a causal LM into pipeline stages at decoder-layer boundaries (used by zoo/train/pipeline.py).

Kept apart from the pipeline's strategy and trainer so that the checks before launch
(zoo/train/preflight.py) can ask what splits without importing the training loop.
Each stage keeps its part of the model in the model's own module tree, so the model's
own ``forward`` runs it and parameter names stay those of the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """Where a causal-LM family keeps its parts (attribute paths from the ``*ForCausalLM`` model).

    ``first``: modules only the first stage runs, with what replaces them elsewhere: ``None`` for
    the token embedding (the forward skips it when given ``inputs_embeds``), ``zeros`` for a
    learned position embedding that the forward adds, ``identity`` for the embedding dropout.
    ``last``: modules only the last stage runs (identity elsewhere).
    """

    layers: str
    first: tuple[tuple[str, str], ...]
    last: tuple[str, ...]


# model_type -> layout; each family here runs in tests/test_pipeline.py
LAYOUTS = {
    "llama": Layout("model.layers", (("model.embed_tokens", "none"),), ("model.norm", "lm_head")),
    "qwen2": Layout("model.layers", (("model.embed_tokens", "none"),), ("model.norm", "lm_head")),
    "gpt2": Layout("transformer.h", (("transformer.wte", "none"), ("transformer.wpe", "zeros"),
                                     ("transformer.drop", "identity")), ("transformer.ln_f", "lm_head")),
}


# timm ResNets (torchvision's layout): a stem, layer1..layerN, then the pooled head; cut between the layers
RESNET_STEM = ("conv1", "bn1", "act1", "maxpool")
RESNET_HEAD = ("global_pool", "fc")


def splittable() -> str:
    return f"causal LMs of the {', '.join(LAYOUTS)} families at decoder layers, timm ResNets at their stages"


def is_text(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in LAYOUTS


def resnet_stages(model: nn.Module) -> list[str]:
    """layer1..layerN of a timm ResNet; empty for a model of another layout."""
    if not all(hasattr(model, name) for name in RESNET_STEM + RESNET_HEAD):
        return []
    return [name for name, _ in model.named_children() if name.startswith("layer") and name[5:].isdigit()]


def check_model(spec: Any, config: Any) -> None:
    """Before launch: a model zoo can split, with at least one decoder layer (or ResNet stage) per stage."""
    from zoo.tasks import get_task
    from zoo.tasks.image_classification import ImageClassification

    if spec.source == "hf" and get_task(spec.task).generates and spec.arch in LAYOUTS:
        layers, kind = _decoder_layers(spec, config), "decoder layers"
    elif spec.source == "timm" and spec.task == ImageClassification.name:
        layers, kind = len(resnet_stages(_timm_skeleton(spec, config))), "stages"
    else:
        layers, kind = 0, ""
    if not layers:
        raise ConfigError(f"--pp {config.pp} cannot split {spec.name} ({spec.source} {spec.arch or spec.source_id}, "
                          f"{spec.task}); --pp splits {splittable()}: leave --pp out to train it with --strategy "
                          "ddp or fsdp")
    if layers < config.pp:
        raise ConfigError(f"--pp {config.pp} is more stages than the {layers} {kind} of {spec.name}; "
                          f"use --pp {layers} or fewer")


def _decoder_layers(spec: Any, config: Any) -> int:
    import transformers

    from zoo.sources.hf import local_folder

    hf_config = transformers.AutoConfig.from_pretrained(str(local_folder(spec)), **dict(config.model_kwargs))
    return int(hf_config.num_hidden_layers)


def _timm_skeleton(spec: Any, config: Any) -> nn.Module:
    """The timm model's module tree without weights (on the meta device: nothing allocated)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(spec.arch or spec.source_id, pretrained=False, **dict(config.model_kwargs))


def stage_layers(layers: int, stages: int) -> list[range]:
    """Decoder layers of each stage: contiguous, as even as possible, the earlier stages taking the extra ones."""
    size, extra = divmod(layers, stages)
    bounds = [0]
    for s in range(stages):
        bounds.append(bounds[-1] + size + (s < extra))
    return [range(bounds[s], bounds[s + 1]) for s in range(stages)]


def _get(root: nn.Module, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: nn.Module, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, name, value)


class _Zeros(nn.Module):
    """Stands in for a learned position embedding on later stages: the first stage already added it."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*positions.shape, self.width, device=positions.device)


def cut_stage(model: nn.Module, stage: int, stages: int) -> nn.Module:
    """Keep ``stage``'s part of ``model`` in place (parameter names unchanged); the rest is dropped."""
    if not is_text(model):
        return _cut_resnet(model, stage, stages)
    layout = LAYOUTS[model.config.model_type]
    layers = _get(model, layout.layers)
    kept = stage_layers(len(layers), stages)[stage]
    # a ModuleList keyed by the original indices: state-dict names stay model.layers.<global index>
    own = nn.ModuleList()
    for index in kept:
        own.add_module(str(index), layers[index])
    _set(model, layout.layers, own)
    if stage > 0:
        for path, replacement in layout.first:
            width = _get(model, path).embedding_dim if replacement == "zeros" else 0
            _set(model, path, {"none": None, "zeros": _Zeros(width), "identity": nn.Identity()}[replacement])
    if stage < stages - 1:
        for path in layout.last:
            _set(model, path, nn.Identity())
    return model


def _cut_resnet(model: nn.Module, stage: int, stages: int) -> nn.Module:
    """A timm ResNet's stage: its layers, the stem on the first, the head on the last (identity elsewhere),
    so ``model(x)`` runs this part: a feature map out of the earlier stages, logits out of the last."""
    names = resnet_stages(model)
    kept = stage_layers(len(names), stages)[stage]
    dropped = [name for i, name in enumerate(names) if i not in kept]
    dropped += list(RESNET_STEM) if stage > 0 else []
    dropped += list(RESNET_HEAD) if stage < stages - 1 else []
    for name in dropped:
        setattr(model, name, nn.Identity())
    if stage < stages - 1:
        model.drop_rate = 0.0  # the head's dropout belongs to the last stage only
    return model
