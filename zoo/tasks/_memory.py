"""What a verification grid case will hold in memory, estimated from shapes and dtype before it runs.

The exporter (``exporters.memory``) adds the process as it stands and onnxruntime's copy
of the weights; each task adds what its forward holds at once on a case, term by term
(``Task.memory_terms``), from what only it knows: a text task its sequence length, an
audio task the frames its feature encoder's strides leave, an image task its side and
patches, a detector its queries. A task with a cache (the causal LM to come) adds its
own term, e.g. ``{"kv cache": 2 * dims.layers * batch * tokens * dims.width * dims.itemsize}``.

The dominant terms of a transformer, one layer alive at a time (torch and onnxruntime
free a layer's tensors before the next):

    attention    batch * heads * tokens^2 * itemsize * ATTENTION_COPIES   (scores, softmax, its NaN guard)
    activations  batch * tokens * width * itemsize * ACTIVATION_COPIES    (width: the widest linear layer)

Nothing here imports torch: ``ModelDims.of`` reads attributes of the module it is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MIB = 1024**2
GIB = 1024**3
# Score-sized tensors alive together in one attention layer. The dynamo graph guards its softmax against fully
# masked rows (IsNaN, Where), so onnxruntime holds the scores, the softmax, the NaN mask and the guarded copy at
# once: measured 4.8 to 4.9 score sizes on a wav2vec2 graph at 1763 and 3203 frames (torch's fused kernel: ~0).
ATTENTION_COPIES = 6
# A layer's input, its residual, the widest projection and its activation are alive together.
ACTIVATION_COPIES = 4
# A convolution's input, its output and the normalised output are alive together.
CONV_COPIES = 3
# Feature maps per input element of a CNN, at once: vgg11 at 224 px holds 64 channels at full resolution
# twice (its input and output, 2 x 64 / 3 = 43 per input element); efficientnet and resnet stay below.
PIXEL_EXPANSION = 48
_HEAD_ATTRIBUTES = ("num_attention_heads", "num_heads", "n_heads", "encoder_attention_heads")


@dataclass(frozen=True)
class ModelDims:
    """What the estimate needs to know of a model: its weights, activation dtype and transformer sizes.

    ``heads`` is 0 for a model without attention (a CNN); ``config`` is the transformers
    config when there is one, for what only a task reads (conv strides, patch size, queries).
    """

    weights: int  # bytes of parameters and buffers
    itemsize: int = 4  # bytes per activation element: the parameters' dtype
    heads: int = 0
    width: int = 0  # the widest linear layer (max of in and out features): hidden, MLP or output size
    layers: int = 0
    patch: int = 0  # a vision transformer's patch side (0: none)
    config: Any = None

    @classmethod
    def of(cls, module: Any) -> ModelDims:
        """Read a torch module (a transformers model, a timm model, or a wrapper around one)."""
        weights, itemsize = 0, 0
        for tensor in [*module.parameters(), *module.buffers()]:
            weights += tensor.numel() * tensor.element_size()
            if not itemsize and tensor.is_floating_point():
                itemsize = tensor.element_size()
        config = next((m.config for m in module.modules() if hasattr(getattr(m, "config", None), "model_type")),
                      None)
        heads, width, patch = 0, 0, 0
        for sub in module.modules():
            heads = max([heads, *(_int(getattr(sub, a, 0)) for a in _HEAD_ATTRIBUTES)])
            width = max(width, _int(getattr(sub, "in_features", 0)), _int(getattr(sub, "out_features", 0)))
            patch = patch or _side(getattr(sub, "patch_size", 0))
        if config is not None:
            heads = max(heads, _int(getattr(config, "num_attention_heads", 0)))
            patch = _side(getattr(config, "patch_size", 0)) or patch
        layers = _int(getattr(config, "num_hidden_layers", 0)) if config is not None else 0
        return cls(weights, itemsize or 4, heads, width, layers, patch, config)

    def setting(self, name: str, default: Any = None) -> Any:
        """A transformers config value (conv strides, queries ...), ``default`` without config or value."""
        value = getattr(self.config, name, None) if self.config is not None else None
        return default if value is None else value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _side(value: Any) -> int:
    """A patch side from an int or an (h, w) pair (the smaller side: more patches, so the estimate errs high)."""
    if isinstance(value, (tuple, list)) and value:
        return min(_int(v) for v in value)
    return _int(value)


def transformer_terms(dims: ModelDims, batch: int, tokens: int) -> dict[str, int]:
    """Attention scores and per-token activations of one transformer layer over ``tokens`` per row."""
    terms = {"activations": batch * tokens * dims.width * dims.itemsize * ACTIVATION_COPIES}
    if dims.heads:
        terms["attention"] = batch * dims.heads * tokens * tokens * dims.itemsize * ATTENTION_COPIES
    return terms


def pixel_terms(dims: ModelDims, pixels: tuple[int, ...]) -> dict[str, int]:
    """A [batch, channels, height, width] input: CNN feature maps, or patches when the model has them."""
    batch, channels, height, width = pixels
    if dims.patch and dims.heads:
        return transformer_terms(dims, batch, patch_tokens(height, width, dims.patch))
    return {"feature maps": batch * channels * height * width * dims.itemsize * PIXEL_EXPANSION}


def patch_tokens(height: int, width: int, patch: int) -> int:
    """Patches of a side-``patch`` grid over the picture, plus one class token."""
    return math.ceil(height / patch) * math.ceil(width / patch) + 1


def conv_lengths(samples: int, kernels: Iterable[int], strides: Iterable[int]) -> list[int]:
    """Output length of each 1-D convolution (no padding) in a stack, as wav2vec2's feature encoder computes it."""
    lengths = []
    for kernel, stride in zip(kernels, strides):
        samples = max(0, (samples - kernel) // stride + 1)
        lengths.append(samples)
    return lengths


def input_terms(inputs: dict[str, Any]) -> dict[str, int]:
    """The case's own arrays (and torch's view of them): small next to the rest, counted all the same."""
    return {"inputs": sum(int(a.nbytes) for a in inputs.values())}


@dataclass
class CaseMemory:
    """A grid case's memory: the estimate by term (bytes), how it was shrunk to fit, and what was measured."""

    terms: dict[str, int]
    budget: int = 0  # the bytes it was planned to fit
    shrunk: str = ""  # what the planner changed to fit the budget, e.g. "2x480000 -> 2x240000"
    peaks: dict[str, int] = field(default_factory=dict)  # measured resident peak per phase: torch, onnxruntime

    @property
    def estimate(self) -> int:
        return sum(self.terms.values())

    def record(self) -> dict[str, Any]:
        """The report's figures, in MiB."""
        out: dict[str, Any] = {"estimate_mib": _mib(self.estimate),
                               "terms_mib": {k: _mib(v) for k, v in self.terms.items()}}
        out.update({f"{phase}_peak_mib": _mib(v) for phase, v in self.peaks.items()})
        return {**out, "shrunk": self.shrunk} if self.shrunk else out


def _mib(value: int) -> float:
    return round(value / MIB, 1)


def size_text(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / MIB:.0f} MiB"
