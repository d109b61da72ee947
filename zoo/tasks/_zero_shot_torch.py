"""The torch side of zero-shot training: a contrastive loss over picture x class-caption pairs, and accuracy.

The model's forward gives ``logits_per_image`` = logit_scale * image . text (+ bias for
SigLIP). Its own ``return_loss=True`` pairs picture i with caption i and counts every other
caption of the batch as a negative; with a few classes a batch holds one caption many times,
and SigLIP's loss then pushes a picture away from copies of its own caption (measured: tiny
SigLIP on builtin:shapes stayed at 0.28 -> 0.26 zero-shot accuracy). So each distinct class
caption of the batch is one text, and the model's loss form is applied with every picture of a
class as that caption's positive: cross-entropy over the captions for CLIP (softmax), a
sigmoid per pair for SigLIP (positive +1, the rest -1), as each model's loss defines it.

Validation scores every picture against every class's caption as predict does,
activation(logit_scale * image . text + bias): the activation keeps the order, so the class
with the highest logit is the one predict ranks first. Imported only with torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoo.tasks._zero_shot_data import ACTIVATION_KEY, PROMPT_PREFIX


def training_loss(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(loss x pictures, pictures), against the captions of the classes present in the batch."""
    pixels = inputs["pixel_values"]
    labels = batch["labels"].to(pixels.device)
    present, target = torch.unique(labels, return_inverse=True)
    logits = _class_logits(runner, inputs, pixels, present)
    return _loss(logits, target, batch[ACTIVATION_KEY]) * len(labels), len(labels)


def eval_batch(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor],
               rows: list[bool]) -> tuple[float, int, list[tuple[int, int]]]:
    """(loss x kept pictures, kept pictures, (true class, zero-shot class) per kept picture), every class scored."""
    keep = [i for i, k in enumerate(rows) if k]
    if not keep:
        return 0.0, 0, []
    pixels = inputs["pixel_values"][keep]
    labels = batch["labels"][keep].to(pixels.device)
    logits = _class_logits(runner, inputs, pixels, None)
    loss = _loss(logits, labels, batch[ACTIVATION_KEY])
    return float(loss) * len(keep), len(keep), list(zip(labels.tolist(), logits.argmax(-1).tolist()))


def _class_logits(runner: Any, inputs: dict[str, torch.Tensor], pixels: torch.Tensor,
                  classes: torch.Tensor | None) -> torch.Tensor:
    """The model's logits_per_image [pictures, classes] against the class captions (all, or the ``classes`` given)."""
    texts = {name.removeprefix(PROMPT_PREFIX): value if classes is None else value.index_select(0, classes)
             for name, value in inputs.items() if name.startswith(PROMPT_PREFIX)}
    return runner.model(pixel_values=pixels, **texts).logits_per_image.float()


def _loss(logits: torch.Tensor, target: torch.Tensor, activation: str) -> torch.Tensor:
    """Mean over pictures: CLIP's cross-entropy over the captions, or SigLIP's sigmoid loss summed over them."""
    if activation == "softmax":
        return F.cross_entropy(logits, target)
    signs = 2 * F.one_hot(target, logits.shape[1]).to(logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum(dim=1).mean()
