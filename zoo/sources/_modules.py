"""torch modules around transformers models. Imported only when torch is wanted."""

from __future__ import annotations

import torch
from torch import nn


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


class _Forward(nn.Module):
    """Base of the export wrappers: named tensors in, the one output tensor out.

    The exporters read argument names from ``forward``'s signature (dynamo's
    ``dynamic_shapes`` keys), so each input set gets a class with an explicit
    signature rather than ``**kwargs``.
    """

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def _run(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**inputs)
        if isinstance(out, torch.Tensor):
            return out
        return out[self.output] if self.output in out else out[0]


class ImageForward(_Forward):
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._run(pixel_values=pixel_values)


class TextForward(_Forward):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._run(input_ids=input_ids, attention_mask=attention_mask)


class TextWithTypesForward(_Forward):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self._run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


_WRAPPERS = {
    ("pixel_values",): ImageForward,
    ("input_ids", "attention_mask"): TextForward,
    ("input_ids", "attention_mask", "token_type_ids"): TextWithTypesForward,
}


def forward_wrapper(model: nn.Module, input_names: tuple[str, ...], output: str) -> _Forward:
    try:
        return _WRAPPERS[tuple(input_names)](model, output)
    except KeyError:
        from zoo.errors import ConfigError

        valid = "; ".join(", ".join(k) for k in _WRAPPERS)
        raise ConfigError(f"inputs {', '.join(input_names)} are not supported in this order; "
                          f"valid input lists: {valid}") from None


class TimmForward(_Forward):
    """timm models take the image tensor positionally."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)
