"""The encoder-decoder core, torch side: the two modules an encoder-decoder export traces, and the torch references.

API (shared by text2text-generation and automatic-speech-recognition's Whisper; imported only when torch is wanted):

* ``encoder_module(model, encoder_inputs)``: the ``encoder.onnx`` module. ``encoder_inputs`` names the encoder's
  graph inputs in order, whatever they are (``("input_ids", "attention_mask")`` for text, ``("input_features",)``
  for Whisper); each goes to ``model.get_encoder()`` under its own name, and ``attention_mask``, when present,
  also masks the cross-attention. Outputs: ``last_hidden_state`` [batch, encoder_sequence, hidden] and, per decoder
  layer, ``cross.N.key`` / ``cross.N.value`` [batch, heads, encoder_sequence, head dim]: the cross-attention keys
  and values, computed once per input by the decoder's own cross-attention projections.
* ``decoder_module(model, layers, masked)``: the ``model.onnx`` module, one graph for every step. Inputs:
  ``decoder_input_ids`` [batch, decoder_sequence], ``encoder_attention_mask`` [batch, encoder_sequence] (only when
  ``masked``), per layer ``past_key_values.N.key`` / ``.value`` [batch, heads, past_sequence, head dim] (the
  self-attention cache, empty at the first step) and ``cross.N.key`` / ``.value`` (the encoder graph's outputs,
  fed unchanged to every step); outputs ``logits`` [batch, decoder_sequence, vocab] and ``present.N.key`` /
  ``.value`` (the self-attention cache grown by the new tokens). The decoder side is never padded: every row
  has the same number of tokens, as generation appends one column to all rows (a finished row gets padding).
* ``TorchSeq2Seq(model)``: the transformers model with its own ``EncoderDecoderCache``, step by step: the
  reference the step-by-step checks (``zoo.tasks._seq2seq_verify``) compare the two graphs with.

Why the cross-attention keys and values come out of the encoder graph: they depend on the encoder output only,
so one encoder call makes them for the whole generation, and a single decoder graph then serves the first step
and every later one (no second decoder graph without a cache, no branch inside one). The encoder module gets
them by running the decoder's first layer stack once on a dummy token against an empty ``EncoderDecoderCache``:
transformers fills the cross-attention cache with each family's own projections (T5's, BART's, Whisper's), and
the exporter's dead-code removal keeps only those projections of that run in the graph.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from zoo.tasks._generate_torch import identifier


def cross_names(layers: int) -> list[str]:
    return [f"cross.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def decoder_input_names(layers: int, masked: bool) -> list[str]:
    return ["decoder_input_ids"] + (["encoder_attention_mask"] if masked else []) + past_names(layers) + \
        cross_names(layers)


def _named(module: nn.Module, names: list[str], args: tuple[torch.Tensor, ...],
           kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Positional and keyword inputs by identifier (torch callers pass the graph names, the exporter identifiers)."""
    inputs = dict(zip([identifier(n) for n in names], args))
    inputs.update({identifier(k): v for k, v in kwargs.items()})
    return inputs


class EncoderWithCross(nn.Module):
    """``model``'s encoder and its decoder's cross-attention keys/values: ``(last_hidden_state, cross.0.key, ...)``."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names, self.config = model, names, model.config

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache, EncoderDecoderCache

        inputs = _named(self, self.names, args, kwargs)
        encoded = self.model.get_encoder()(**inputs, return_dict=True, output_hidden_states=True)
        states = self.cross_source(encoded)
        batch = states.shape[0]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        extra = {"encoder_attention_mask": inputs["attention_mask"]} if "attention_mask" in inputs else {}
        start = torch.zeros((batch, 1), dtype=torch.long, device=states.device)
        # the decoder's own cross-attention fills the cache from ``states``; the rest of this run is dead code
        self.model.get_decoder()(input_ids=start, encoder_hidden_states=states, cache=cache, use_cache=True,
                                 **extra)
        flat: list[torch.Tensor] = []
        for layer in cache.cross_attention_cache.layers:
            flat += [layer.keys, layer.values]
        return (encoded.last_hidden_state, *flat)

    def cross_source(self, encoded: Any) -> torch.Tensor:
        """What the cross-attention attends to: the encoder's last hidden state."""
        return encoded.last_hidden_state


class DecoderWithCross(nn.Module):
    """``model``'s decoder and LM head on one step: ``(logits, present.0.key, present.0.value, ...)``."""

    def __init__(self, model: nn.Module, layers: int, masked: bool):
        super().__init__()
        self.model, self.layers, self.masked, self.config = model, layers, masked, model.config

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = _named(self, decoder_input_names(self.layers, self.masked), args, kwargs)
        past = [(inputs[f"past_key_values_{i}_key"], inputs[f"past_key_values_{i}_value"]) for i in range(self.layers)]
        cross = [(inputs[f"cross_{i}_key"], inputs[f"cross_{i}_value"]) for i in range(self.layers)]
        return self.run(inputs["decoder_input_ids"], inputs.get("encoder_attention_mask"), past, cross)

    def run(self, ids: torch.Tensor, mask: torch.Tensor | None, past: list[tuple[torch.Tensor, torch.Tensor]],
            cross: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        cache = full_cache(past, cross)
        key = cross[0][0]
        # the cached cross keys/values replace the encoder output: only its shape is read (zeros never reach a value)
        states = torch.zeros((key.shape[0], key.shape[2], hidden_size(self.config)), dtype=key.dtype)
        extra = {"attention_mask": mask} if mask is not None else {}
        output = self.model(encoder_outputs=(states,), decoder_input_ids=ids, cache=cache, use_cache=True, **extra)
        flat: list[torch.Tensor] = []
        for layer in output.cache.self_attention_cache.layers:
            flat += [layer.keys, layer.values]
        return (output.logits, *flat)


def full_cache(past: list[tuple[torch.Tensor, torch.Tensor]], cross: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """transformers' ``EncoderDecoderCache`` from flat tensors; non-empty cross entries count as computed. No
    config: a config's layer count may be the encoder's (T5's ``num_layers``), not the decoder's."""
    from transformers import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(ddp_cache_data=past),
                               DynamicCache(ddp_cache_data=cross))


def hidden_size(config: Any) -> int:
    return int(getattr(config, "d_model", None) or config.hidden_size)


def _with_signature(cls: type[nn.Module], names: list[str], label: str, *args: Any) -> nn.Module:
    """``cls(*args)`` with a ``forward`` signature naming every graph input (as identifiers), for the exporters."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(identifier(n), inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]

    def forward(self: nn.Module, *a: torch.Tensor, **kw: torch.Tensor) -> Any:
        return cls.forward(self, *a, **kw)

    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return type(f"{type(args[0]).__name__}{label}", (cls,), {"forward": forward})(*args)


def encoder_module(model: nn.Module, names: list[str], cls: type[EncoderWithCross] = EncoderWithCross) -> nn.Module:
    return _with_signature(cls, names, "Encoder", model, names)


def decoder_module(model: nn.Module, layers: int, masked: bool,
                   cls: type[DecoderWithCross] = DecoderWithCross) -> nn.Module:
    return _with_signature(cls, decoder_input_names(layers, masked), "Decoder", model, layers, masked)


class TorchSeq2Seq:
    """The transformers model itself (not the export modules): encoder once, then decoder steps with its own cache."""

    def __init__(self, model: Any, encoder_inputs: dict[str, Any]):
        from transformers import DynamicCache, EncoderDecoderCache

        self.model = model
        self.inputs = {k: torch.from_numpy(v) for k, v in encoder_inputs.items()}
        with torch.no_grad():
            self.encoded = model.get_encoder()(**self.inputs, return_dict=True)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, ids: Any) -> Any:
        """Logits [batch, new, vocab] (numpy) of the new decoder tokens ``ids`` (numpy) after those fed so far."""
        extra = {"attention_mask": self.inputs["attention_mask"]} if "attention_mask" in self.inputs else {}
        with torch.no_grad():
            out = self.model(encoder_outputs=self.encoded, decoder_input_ids=torch.from_numpy(ids), cache=self.cache,
                             use_cache=True, **extra)
        self.cache = out.cache
        return out.logits.float().numpy()
