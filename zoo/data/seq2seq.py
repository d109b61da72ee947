"""Encoder-decoder training examples: the source's token ids for the encoder, the target's for the decoder.

transformers' encoder-decoders take ``labels`` and make the decoder's inputs from them (shifted right
behind the decoder start token), so a batch is ``input_ids`` / ``attention_mask`` (sources padded on
the right) and ``labels`` (targets padded with ``IGNORE_INDEX``, which the loss skips). No packing:
each row is one example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.data.labels import IGNORE_INDEX


@dataclass
class Seq2SeqExamples:
    rows: list[tuple[list[int], list[int]]]  # (source ids, target ids) per example
    pad_id: int

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in indices]
        width = max(len(s) for s, _ in rows)
        length = max(len(t) for _, t in rows)
        return {"input_ids": torch.tensor([s + [self.pad_id] * (width - len(s)) for s, _ in rows]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in rows]),
                "labels": torch.tensor([t + [IGNORE_INDEX] * (length - len(t)) for _, t in rows])}

    def target_count(self, indices: list[int]) -> int:
        return sum(len(self.rows[i][1]) for i in indices)

    def packed_to(self, max_length: int) -> Seq2SeqExamples:
        return self  # one example per row: an encoder-decoder's source and target do not concatenate
