"""torch modules the tasks export and train through. Imported only when torch is wanted.

The exporters read argument names from ``forward``'s signature (dynamo's
``dynamic_shapes`` keys), so ``task_module`` gives each wrapper an explicit
signature built from the spec's input names instead of ``**kwargs``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from zoo.spec import ModelSpec


class TaskModule(nn.Module):
    """Named tensors in, the task's outputs (in ``output_names`` order) out."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], positional: bool, task: Any,
                 spec: ModelSpec):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.positional = positional
        self.task = task
        self.spec = spec

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        inputs = dict(zip(self.input_names, args))
        inputs.update(kwargs)
        if self.positional:  # timm models take the image tensor positionally
            output = self.model(*(inputs[n] for n in self.input_names))
        else:
            output = self.model(**inputs)
        return self.task.select_outputs(output, self.spec)


def task_module(model: nn.Module, spec: ModelSpec, task: Any) -> TaskModule:
    """A ``TaskModule`` whose ``forward`` signature lists the spec's inputs by name."""
    names = tuple(i.name for i in spec.inputs)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]

    def forward(self: TaskModule, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        return TaskModule.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cls = type(f"{type(model).__name__}Task", (TaskModule,), {"forward": forward})
    return cls(model, names, spec.positional_inputs, task, spec)


class SentenceEmbedder(nn.Module):
    """Transformer + pooling (+ L2 normalisation), as sentence-transformers computes it."""

    def __init__(self, transformer: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize
        self.config = transformer.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def save_pretrained(self, folder: Any, **kwargs: Any) -> None:
        """The transformer's own folder; the pooling config travels in the sentence-transformers files."""
        self.transformer.save_pretrained(folder, **kwargs)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        # sentence-transformers clamps the token count at 1e-9 to survive empty rows
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    if mode == "lasttoken":
        last = mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
    raise ValueError(f"unknown pooling '{mode}'; valid: cls, mean, max, lasttoken")
