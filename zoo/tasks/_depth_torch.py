"""The torch side of depth estimation: an export fix, the loss and validation records. Imported only with torch.

Depth Anything's head sizes its upsampling with ``int(patch_height * patch_size)``;
``int`` of a symbolic size makes torch.export pin the picture's height and width to
the traced ones, while the processor resizes every picture to its own aspect ratio.

transformers' depth models compute no loss (they raise when given labels), so training
fits each prediction to its target by a least-squares scale and shift (MiDaS's
scale-and-shift invariance: relative depth is right up to both) and takes the mean
squared error; validation reports δ1 and AbsRel of the fitted prediction.
"""

from __future__ import annotations

import builtins
import importlib
from typing import Any

import torch

# transformers modules whose forward calls int() on a size derived from the picture's
_INT_OF_SIZE = {"depth_anything": "transformers.models.depth_anything.modeling_depth_anything"}


def _size_int(value: Any) -> Any:
    """``int`` that keeps a symbolic size symbolic while torch.export traces it (an int in eager mode)."""
    return value if isinstance(value, torch.SymInt) else builtins.int(value)


def allow_dynamic_size(model_type: str) -> None:
    """Let the model export with a dynamic height and width: a module-level ``int`` that leaves sizes symbolic."""
    module = _INT_OF_SIZE.get(model_type)
    if module is not None:
        importlib.import_module(module).int = _size_int  # type: ignore[attr-defined]


# ---------------------------------------------------------------- training


def aligned(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``predicted`` scaled and shifted to fit ``target`` by least squares (one picture, any shape).

    Relative depth models are right up to a scale and shift (MiDaS's scale-and-shift
    invariant loss); the fit is solved in closed form and stays in the graph.
    """
    p, t = predicted.flatten().float(), target.flatten().float()
    p_mean, t_mean = p.mean(), t.mean()
    spread = ((p - p_mean) ** 2).sum().clamp_min(1e-12)
    scale = ((p - p_mean) * (t - t_mean)).sum() / spread
    return (predicted.float() - p_mean) * scale + t_mean


def _pairs(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor],
           keep: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction, target resized to it) per kept picture."""
    picked = torch.as_tensor(keep, device=next(iter(inputs.values())).device)
    depth = runner.model(**{k: v.index_select(0, picked) for k, v in inputs.items()}).predicted_depth
    pairs = []
    for prediction, i in zip(depth, keep):
        target = batch["depth"][i].to(prediction.device)[None, None]
        target = torch.nn.functional.interpolate(target, size=prediction.shape[-2:], mode="bilinear",
                                                 align_corners=False)[0, 0]
        pairs.append((prediction, target))
    return pairs


def training_loss(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed per-picture loss, pictures): mean squared error after the scale-and-shift fit."""
    pairs = _pairs(runner, batch, inputs, list(range(len(batch["depth"]))))
    return torch.stack([((aligned(p, t) - t) ** 2).mean() for p, t in pairs]).sum(), len(pairs)


def eval_batch(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor],
               rows: list[bool]) -> tuple[float, int, list[list[float]]]:
    """(loss x kept pictures, kept pictures, [pixels within 1.25, pixels, summed relative error] per picture)."""
    keep = [i for i, k in enumerate(rows) if k]
    if not keep:  # a rank whose share is all padding still runs its forward
        runner.model(**inputs)
        return 0.0, 0, []
    loss, records = 0.0, []
    for prediction, target in _pairs(runner, batch, inputs, keep):
        fitted = aligned(prediction, target)
        loss += float(((fitted - target) ** 2).mean())
        truth = target.clamp_min(1e-6)
        guess = fitted.clamp_min(1e-6)
        ratio = torch.maximum(guess / truth, truth / guess)
        relative = float(((guess - truth).abs() / truth).sum())
        records.append([float((ratio < 1.25).sum()), float(truth.numel()), relative])
    return loss, len(keep), records
