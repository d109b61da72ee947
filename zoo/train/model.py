"""The model a run trains: built from the spec and the label plan, and what a resumed run rebuilds it from."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from zoo.spec import ModelSpec


def build_model(spec: ModelSpec, plan: Any, config: Any, *, pretrained: bool | None = None) -> nn.Module:
    """The source's model with the plan's head: the pretrained head kept, or a new one for the data's labels.

    ``pretrained`` defaults to the config's (``--random-init``); a resumed run builds
    with random weights, since its checkpoint holds every weight (no download).
    """
    from zoo import sources

    load = (not config.random_init) if pretrained is None else pretrained
    labels = plan.names if plan.new_head else None
    model, _ = sources.for_spec(spec).create_model(spec, labels=labels, pretrained=load,
                                                   model_kwargs=dict(config.model_kwargs) or None)
    if load and plan.new_head and spec.labels and len(spec.labels) == len(plan.names):
        # same number of classes: the source loaded the old head's weights into the new one
        reset_head(model)
    if config.gradient_checkpointing:
        checkpoint_activations(model)
    if config.lora_r is not None:
        from zoo.train.lora import add_adapters

        model = add_adapters(model, config)
    return model


def checkpoint_activations(model: nn.Module) -> None:
    """Gradient checkpointing through the model's own switch (transformers or timm)."""
    from zoo.errors import ConfigError

    if getattr(model, "supports_gradient_checkpointing", False):
        # non-reentrant: works with frozen inputs (LoRA) and with DDP's hooks. transformers 5.x names the switch
        # activation_checkpointing_enable (the gradient_ name is a deprecated alias, gone in v6); 4.x has only the old
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    else:
        raise ConfigError(f"--gradient-checkpointing: {type(model).__name__} has no gradient checkpointing; "
                          "leave the flag out")


def reset_head(model: nn.Module) -> None:
    """Fresh random weights in the classification head (timm's classifier; a transformers head's modules)."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm
        modules = [get_classifier()]
    else:  # transformers: every child outside the encoder (classifier, and dropout without weights)
        base = model.base_model
        modules = [child for child in model.children() if child is not base]
    for module in modules:
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()


def save_base(spec: ModelSpec, folder: Path) -> None:
    """The base model's config and preprocessor files, without weights: what ``--resume`` rebuilds from.

    A timm:ARCH name needs nothing (timm builds it from its own registry); a folder
    or a hub model gets its config.json and tokenizer / image-processor files copied.
    """
    from zoo import sources

    source = sources.for_spec(spec).local_folder(spec)
    if source is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, folder / name)
    processor = sources.load_processor(spec)
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(folder)
    from zoo.sources.hf import save_tokenizer

    save_tokenizer(Path(source), folder)


def fresh_copy(spec: ModelSpec, plan: Any, config: Any) -> nn.Module:
    """An unwrapped model of the same shape (random weights) to load the trained weights into for saving."""
    return build_model(spec, plan, dataclasses.replace(config, random_init=True))
