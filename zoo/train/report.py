"""What a run writes besides weights: ``metrics.jsonl``, ``curves.png`` and ``run.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSON lines, one per logged step or evaluation; a no-op on ranks other than 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step``: a resumed run writes those steps again."""
        if self.enabled and self.path.is_file():
            kept = [line for line in self.read() if line.get("step", 0) <= step]
            self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: Path, metric: str = "val_accuracy") -> None:
    """Loss (train and validation) and the task's main validation metric against the step."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train")
    left.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label="validation")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    key = metric
    right.plot([r["step"] for r in val], [r.get(key, 0.0) for r in val], marker="o", color="tab:green",
               label=key.removeprefix("val_"))
    # the task's other validation scores beside the main one (detection: mAP@.5 beside mAP@[.5:.95])
    # (perplexity is the validation loss on another scale: the left panel shows it already)
    shown = ("val_loss", "val_perplexity", key)
    others = sorted({k for r in val for k in r if k.startswith("val_") and k not in shown})
    for other in others:
        right.plot([r["step"] for r in val], [r.get(other, 0.0) for r in val], marker=".", linestyle="--",
                   label=other.removeprefix("val_"))
    if others:
        right.legend()
    right.set(xlabel="step", ylabel=key.removeprefix("val_"), title=f"validation {key.removeprefix('val_')}")
    if not key.endswith(("loss", "perplexity")):  # scores run from 0 to 1
        right.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
