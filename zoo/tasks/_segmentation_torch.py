"""The torch side of segmentation: the model's own loss and validation records. Imported only with torch.

transformers computes the loss when ``labels`` are passed (cross-entropy of the logits
upsampled to the mask, 255 ignored; UperNet adds its auxiliary head's). Validation
upsamples the logits to the mask the same way, takes the argmax, and keeps per class
the areas mean IoU is made of (``_segmentation_data.areas``).
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.tasks._segmentation_data import areas


def training_loss(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(loss x pictures, pictures): the model's own per-pixel loss, weighted like a per-picture mean."""
    labels = batch["labels"].to(next(iter(inputs.values())).device)
    output = runner.model(**inputs, labels=labels)
    return output.loss.float() * len(labels), len(labels)


def eval_batch(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor],
               rows: list[bool]) -> tuple[float, int, list[list[int]]]:
    """(loss x kept pictures, kept pictures, one areas record per kept picture)."""
    keep = [i for i, k in enumerate(rows) if k]
    model = runner.model
    if not keep:  # a rank whose share is all padding still runs its forward
        model(**inputs)
        return 0.0, 0, []
    device = next(iter(inputs.values())).device
    picked = torch.as_tensor(keep, device=device)
    labels = batch["labels"].to(device).index_select(0, picked)
    output = model(**{k: v.index_select(0, picked) for k, v in inputs.items()}, labels=labels)
    logits = torch.nn.functional.interpolate(output.logits.float(), size=labels.shape[-2:], mode="bilinear",
                                             align_corners=False)
    predicted = logits.argmax(dim=1).cpu().numpy()
    classes = int(output.logits.shape[1])
    truth = labels.cpu().numpy()
    return float(output.loss) * len(keep), len(keep), [areas(p, t, classes) for p, t in zip(predicted, truth)]
