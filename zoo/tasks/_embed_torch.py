"""The torch module an image embedder exports and runs through. Imported only when torch is wanted."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ImageEmbedder(nn.Module):
    """A backbone's pooled embedding [batch, dim], optionally L2-normalised.

    timm models are built with ``num_classes=0``, so their forward already ends in the
    pooled pre-logits features; a transformers backbone (``XModel``) gives its
    ``pooler_output`` (what transformers' image-feature-extraction pipeline returns with
    ``pool=True``), or, for one built without a pooler, the mean of its last hidden states.
    """

    def __init__(self, backbone: nn.Module, normalize: bool):
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
        # timm's data config and transformers' config stay readable through the wrapper
        for name in ("pretrained_cfg", "default_cfg", "config"):
            if hasattr(backbone, name):
                setattr(self, name, getattr(backbone, name))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.backbone(pixel_values)
        pooled = output if isinstance(output, torch.Tensor) else _pooled(output)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def save_pretrained(self, folder: Any, **kwargs: Any) -> None:
        self.backbone.save_pretrained(folder, **kwargs)


def _pooled(output: Any) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)  # ResNet-style poolers keep 1 x 1 spatial dims
    hidden = output.last_hidden_state
    # tokens [batch, tokens, dim] or feature maps [batch, channels, height, width]
    return hidden.mean(1) if hidden.ndim == 3 else hidden.mean((2, 3))
