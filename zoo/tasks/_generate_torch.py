"""The decoder a text-generation export traces: flat cache tensors in, logits and the grown cache out.

One graph serves prefill (an empty cache, ``past_sequence`` 0) and every decode
step. The exporters trace ``forward`` by argument name, and a graph input name
like ``past_key_values.0.key`` is not a Python identifier, so the signature lists
``past_key_values_0_key`` and ``forward`` accepts either spelling (torch callers
pass the graph names). Imported only when torch is wanted.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import nn


def identifier(name: str) -> str:
    """A graph input name as a Python argument name: 'past_key_values.0.key' -> 'past_key_values_0_key'."""
    return re.sub(r"\W", "_", name)


def cache_argument(model: nn.Module) -> str:
    """The name a causal LM's ``forward`` takes its cache by: ``cache`` since transformers 5.25, which keeps
    ``past_key_values`` as a deprecated alias until 5.40; ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The grown cache of a causal LM's output, under either name (see ``cache_argument``)."""
    return output["cache"] if "cache" in output else output.past_key_values


class DecoderWithCache(nn.Module):
    """A transformers causal LM behind named flat tensors: ``(logits, present.0.key, present.0.value, ...)``.

    The cache comes in as one key and one value tensor per layer, [batch, kv heads, past, head dim]
    (grouped-query attention keeps its fewer KV heads), is rebuilt into transformers' ``DynamicCache``,
    and goes out grown by the new tokens.
    """

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        self.config = model.config

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = [identifier(n) for n in input_names(self.layers)]
        inputs = dict(zip(names, args))
        inputs.update({identifier(k): v for k, v in kwargs.items()})
        return self.run(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                        [(inputs[f"past_key_values_{i}_key"], inputs[f"past_key_values_{i}_value"])
                         for i in range(self.layers)])

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
            past: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        # full-length layers, sliding-window ones included (Mistral v0.1, Gemma 2/3): the graph's cache keeps every
        # position and the window is in the attention mask; the config's sliding layers would keep the last
        # window - 1 only and hand back a cache shorter than the graph's
        cache = DynamicCache(ddp_cache_data=past)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, **{cache_argument(self.model): cache})
        # A left-padding position attends to nothing, so what the model computes there is arbitrary, and
        # torch and the dynamo graph do compute different things (GPT-2: 0.09 of a logit row). Zeros there
        # make every output well defined; later steps mask those cache entries out all the same.
        keep = attention_mask.to(output.logits.dtype)
        flat: list[torch.Tensor] = []
        for layer in output_cache(output).layers:
            flat += [layer.keys * keep[:, None, :, None], layer.values * keep[:, None, :, None]]
        return (output.logits * keep[:, -input_ids.shape[1]:, None], *flat)


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def decoder_module(model: nn.Module, layers: int, cls: type[DecoderWithCache] = DecoderWithCache) -> nn.Module:
    """``cls`` around ``model`` with a ``forward`` signature naming every graph input (as identifiers)."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(identifier(n), inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names(layers)]

    def forward(self: DecoderWithCache, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        return cls.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return type(f"{type(model).__name__}Decoder", (cls,), {"forward": forward})(model, layers)
