"""The torch side of detection: the model's own loss, validation records, an export fix. Imported only with torch.

Loss: transformers computes the DETR-family set loss (Hungarian matching, class
cross-entropy or focal loss, L1 and GIoU box terms) when ``labels`` are passed,
so training calls the wrapped model with them. Validation runs one forward per
call on the rows the loop keeps (FSDP needs the same number of forwards on every
rank) and turns its outputs into detections for COCO mAP with the same numpy
decoding the runtime uses.
"""

from __future__ import annotations

import builtins
import importlib
from typing import Any

import numpy as np
import torch

from zoo.tasks._detection_data import move_labels
from zoo.tasks._detection_postprocess import Decoding, decode

# transformers modules whose forward takes ``len(tensor)`` of the batch; see allow_dynamic_batch
_LEN_OF_BATCH = {"rt_detr": "transformers.models.rt_detr.modeling_rt_detr"}


def _batch_len(value: Any) -> Any:
    """``len`` that keeps a tensor's first dimension symbolic while torch.export traces it."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.shape[0]
    return builtins.len(value)


def allow_dynamic_batch(model_type: str) -> None:
    """Let RT-DETR export with a dynamic batch.

    Its forward reads the batch size with ``len(source_flatten)``; ``Tensor.__len__``
    must return a Python int, so torch.export pins the batch to the traced size.
    A module-level ``len`` that returns ``shape[0]`` for tensors (an int in eager
    mode, a symbol under export) leaves eager results unchanged.
    """
    module = _LEN_OF_BATCH.get(model_type)
    if module is not None:
        importlib.import_module(module).len = _batch_len  # type: ignore[attr-defined]


def core_model(runner: Any) -> Any:
    """The transformers model inside the runner (and inside DDP when it wraps it)."""
    return runner.model


def training_loss(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(loss x pictures, pictures): the model's own set loss, weighted like a per-picture mean."""
    device = next(iter(inputs.values())).device
    output = core_model(runner)(**inputs, labels=move_labels(batch["labels"], device))
    count = len(batch["labels"])
    return output.loss.float() * count, count


def eval_batch(runner: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor], rows: list[bool],
               decoding: Decoding) -> tuple[float, int, list[dict[str, Any]]]:
    """(loss x kept pictures, kept pictures, one record per kept picture for ``coco_map``)."""
    keep = [i for i, k in enumerate(rows) if k]
    model = core_model(runner)
    if not keep:  # a rank whose share is all padding still runs its forward
        model(**inputs)
        return 0.0, 0, []
    device = next(iter(inputs.values())).device
    picked = torch.as_tensor(keep, device=device)
    output = model(**{k: v.index_select(0, picked) for k, v in inputs.items()},
                   labels=move_labels([batch["labels"][i] for i in keep], device))
    targets = [batch["targets"][i] for i in keep]
    found = decode(output.logits.float().cpu().numpy(), output.pred_boxes.float().cpu().numpy(),
                   [t.size for t in targets], decoding, threshold=None)
    return float(output.loss) * len(keep), len(keep), [_record(t, f) for t, f in zip(targets, found)]


def _record(target: Any, found: Any) -> dict[str, Any]:
    """Plain lists (they travel between ranks) of one picture's truth and detections, COCO xywh boxes."""
    xywh = np.concatenate([found.boxes[:, :2], found.boxes[:, 2:] - found.boxes[:, :2]], axis=1)
    return {"size": list(target.size), "gt_boxes": [list(b) for b in target.boxes],
            "gt_labels": list(target.labels), "boxes": xywh.tolist(), "scores": found.scores.tolist(),
            "labels": found.labels.tolist()}
