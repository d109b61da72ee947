"""Language-model examples: token ids with their targets, packed into rows and batched.

Each example is a list of token ids and a list of targets of the same length (the token
itself where the loss counts, ``IGNORE_INDEX`` on prompt tokens); a target at position t
is predicted from the tokens before t, so the loss compares logits[:, :-1] with
targets[:, 1:]. The first token of every example is never a target: packed after
another example, it would be "predicted" from that example's last token.

Packing puts several examples into one row of up to ``max_length`` tokens and keeps
attention inside each example by transformers' packed-sequence convention: no
attention mask, and position ids that restart at 0 where each example starts (the
causal mask builder of transformers >= 5 then makes a block-diagonal mask from
them; ``use_cache=False`` is needed, since that detection is off when a cache is
given). Rows are padded on the right, the padding numbered as an example of its
own, so every row, packed or not, is batched the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.data.labels import IGNORE_INDEX


@dataclass
class Example:
    """One example (or, packed, several: ``lengths`` holds each one's length)."""

    ids: list[int]
    targets: list[int]
    lengths: list[int] = field(default_factory=list)
    answered: bool = False  # the targets are an answer to a prompt (exact-match applies)

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [len(self.ids)]


def example(ids: list[int], targets: list[int], answered: bool) -> Example:
    """An example whose first token is not a target (see the module docstring)."""
    return Example(list(ids), [IGNORE_INDEX] + list(targets[1:]), answered=answered)


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Examples in order, each appended to the current row while it fits in ``max_length`` tokens."""
    rows: list[Example] = []
    for item in examples:
        if rows and len(rows[-1].ids) + len(item.ids) <= max_length:
            row = rows[-1]
            row.ids += item.ids
            row.targets += item.targets
            row.lengths.append(len(item.ids))
        else:
            rows.append(Example(list(item.ids), list(item.targets), list(item.lengths), item.answered))
    return rows


def positions(lengths: list[int], width: int) -> list[int]:
    """Position ids of a row: 0.. for each example, then 0.. again for the padding up to ``width``."""
    out = [p for n in lengths for p in range(n)]
    return out + list(range(width - len(out)))


class LMExamples:
    """Encoded examples (packed rows or one example per row), batched as input_ids, position_ids, labels."""

    def __init__(self, rows: list[Example], pad_id: int, packed: bool):
        self.rows = rows
        self.pad_id = pad_id
        self.packed = packed
        self.counts = [sum(1 for t in r.targets if t != IGNORE_INDEX) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in indices]
        width = max(len(r.ids) for r in rows)
        ids = [r.ids + [self.pad_id] * (width - len(r.ids)) for r in rows]
        targets = [r.targets + [IGNORE_INDEX] * (width - len(r.targets)) for r in rows]
        return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor([positions(r.lengths, width)
                                                                                for r in rows]),
                "labels": torch.tensor(targets), "answered": torch.tensor([r.answered for r in rows])}

    def target_count(self, indices: list[int]) -> int:
        return sum(self.counts[i] for i in indices)

    def packed_to(self, max_length: int) -> LMExamples:
        return LMExamples(pack(self.rows, max_length), self.pad_id, packed=True)
