"""text-generation's training loss and validation records (imported only when torch is wanted).

The loss is the mean next-token cross entropy over the targets (prompt tokens and padding
are IGNORE_INDEX). Exact-match is that of greedy answers, scored with one forward pass:
greedy decoding reproduces an answer (and stops at its EOS) exactly when, with the answer's
own tokens before it, the most likely next token is the answer's at every one of its
positions, so the argmax of teacher-forced logits decides it without a decode loop, and
every rank runs the same number of forwards (FSDP gathers weights in each).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoo.data.labels import IGNORE_INDEX


def forward_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    # use_cache=False: transformers reads packed examples from the position ids only when no cache is given
    return model(**inputs, use_cache=False).logits


def next_targets(labels: torch.Tensor) -> torch.Tensor:
    """What each position predicts: the next position's label (IGNORE_INDEX after the last). Shifting the labels
    rather than slicing the logits spares a copy of the [batch, sequence, vocabulary] logits each step."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross entropy of predicting the next label (0 off the targets), and the target mask."""
    targets = next_targets(labels).to(logits.device)
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    return losses, targets != IGNORE_INDEX


def training_loss(model: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    losses, kept = token_losses(forward_logits(model, inputs), batch["labels"])
    return losses.sum(), int(kept.sum())


def eval_batch(model: Any, batch: dict[str, Any], inputs: dict[str, torch.Tensor],
               rows: list[bool]) -> tuple[float, int, list[Any]]:
    """(loss sum, targets, one record per kept row: (loss sum, targets, exact match or None))."""
    logits = forward_logits(model, inputs)
    losses, kept = token_losses(logits, batch["labels"])
    right = (logits.argmax(-1) == next_targets(batch["labels"]).to(logits.device)) | ~kept
    records = []
    for i, keep in enumerate(rows):
        if keep:
            exact = bool(right[i].all()) if bool(batch["answered"][i]) else None
            records.append((float(losses[i].sum()), int(kept[i].sum()), exact))
    return sum(r[0] for r in records), sum(r[1] for r in records), records


def metrics(records: list[Any]) -> dict[str, float]:
    """Perplexity (exp of the mean token loss) and, where rows answer prompts, their exact-match."""
    import math

    loss, count = sum(r[0] for r in records), sum(r[1] for r in records)
    out = {"val_perplexity": math.exp(min(loss / max(count, 1), 50.0))}
    answered = [r[2] for r in records if r[2] is not None]
    if answered:
        out["val_exact_match"] = sum(answered) / len(answered)
    return out
