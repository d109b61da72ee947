"""``--packing``'s check: a packed row must give each of its examples the logits it gets alone.

Attention stays inside each packed example only where the model builds its causal mask
from restarting position ids (transformers' packed-sequence convention, see zoo/data/lm.py).
A model that ignores them would let every example attend to the ones packed before it and
train on what it will never see at inference, so before the first step one packed row is
run whole and example by example, and the run is refused if they differ.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.errors import ConfigError

TOLERANCE = 1e-4  # of the largest logit: the same tokens in a longer matrix product round differently


def packing_error(model: Any, examples: Any, forward: Any) -> float:
    """Largest difference, relative to the largest logit, between a packed row's logits and its examples' alone.

    ``forward(model, inputs) -> logits``; ``examples``: LMExamples whose first row of two or
    more examples is tested (0.0 when no row holds two).
    """
    row = next((i for i, r in enumerate(examples.rows) if len(r.lengths) > 1), None)
    if row is None:
        return 0.0
    packed = examples.batch([row])
    with torch.no_grad():
        whole = forward(model, {k: packed[k] for k in ("input_ids", "position_ids")})[0]
        start, worst = 0, 0.0
        for length in examples.rows[row].lengths:
            ids = packed["input_ids"][:, start:start + length]
            alone = forward(model, {"input_ids": ids, "position_ids": torch.arange(length)[None]})[0]
            worst = max(worst, float((whole[start:start + length] - alone).abs().max()))
            start += length
    return worst / max(1.0, float(whole.abs().max()))


def check_packing(model: Any, examples: Any, forward: Any) -> None:
    was_training = model.training
    model.eval()  # no dropout: the two forwards must be comparable
    error = packing_error(model, examples, forward)
    model.train(was_training)
    if not error <= TOLERANCE:
        raise ConfigError(f"--packing: {type(model).__name__} lets attention cross packed examples (their logits "
                          f"differ from each example's alone by {error:.3g} of the largest); train without "
                          "--packing")
