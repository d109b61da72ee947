"""Encoded examples and how a list of indices becomes one batch of tensors.

Images are resized once, up front, and kept as uint8 (a quarter of the memory of
float32); each batch is normalised on the fly. Text is tokenised once and padded
per batch by transformers' own collators.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.data.labels import IGNORE_INDEX


class ImageExamples:
    """uint8 images (N, C, H, W) with their class indices."""

    def __init__(self, pixels: torch.Tensor, targets: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...]):
        self.pixels = pixels
        self.targets = targets
        channels = pixels.shape[1]
        self.mean = torch.tensor(mean[:channels], dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std[:channels], dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels = self.pixels.index_select(0, index).float().sub_(self.mean).div_(self.std)
        return {"pixel_values": pixels, "labels": self.targets.index_select(0, index)}

    def target_count(self, indices: list[int]) -> int:
        return len(indices)


class TextExamples:
    """Tokenised rows (``input_ids``, ``attention_mask``, ... , ``labels``), padded per batch."""

    def __init__(self, rows: list[dict[str, Any]], tokenizer: Any, token_level: bool):
        from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

        self.rows = rows
        self.token_level = token_level
        if token_level:
            self.collator = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX,
                                                               return_tensors="pt")
            self.counts = [sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in rows]
        else:
            self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
            self.counts = [1] * len(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return dict(self.collator([self.rows[i] for i in indices]))

    def target_count(self, indices: list[int]) -> int:
        """Targets that count towards the loss (every row, or every first sub-word of a word)."""
        return sum(self.counts[i] for i in indices)
