"""Which label names a fine-tuned model gets, and whether it keeps its pretrained head.

The rules (README, "Fine-tune"):

- Integer labels without names (e.g. CoNLL ``ner_tags`` in JSONL) are ids into the
  model's own ``id2label``: the model keeps its head and all of its label names.
- Named labels (strings, or a ``ClassLabel`` feature's names) that are all among the
  model's labels keep the model's head and its label order.
- Otherwise, or with ``new_head``, the model gets a new head whose labels come from the
  data, in this order: the ``ClassLabel``'s own order; else the sorted distinct names;
  integer ids without names become ``"0"`` .. ``"<largest id>"`` (every id up to the
  largest, so an id keeps its meaning even when some ids are absent from the data).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from zoo.errors import DataError

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: sub-word pieces and padding

SOURCES = {
    "model": "the model's own label set",
    "classlabel": "the data's ClassLabel names",
    "sorted": "the data's distinct labels, sorted",
    "ids": "the data's integer ids 0..max",
}


@dataclass(frozen=True)
class LabelPlan:
    """The label names of the fine-tuned model, in head order, and how they were chosen."""

    names: tuple[str, ...]
    new_head: bool
    source: str  # a key of SOURCES
    distinct: int = 0  # distinct labels the training data uses

    def info(self) -> dict[str, Any]:
        return {"labels": list(self.names), "new_head": self.new_head, "label_source": SOURCES[self.source]}

    def indices(self, values: list[Any], class_names: list[str] | None, what: str) -> list[int]:
        """Raw label values of one table (ids, ClassLabel ints or names) to head positions."""
        lookup = {name: i for i, name in enumerate(self.names)}
        out = []
        for value in values:
            if class_names is None and _is_id(value):
                if not 0 <= value < len(self.names):
                    raise DataError(f"{what} has label id {value}; the model's labels are 0..{len(self.names) - 1} "
                                    f"({_preview(self.names)})")
                out.append(int(value))
                continue
            name = class_names[value] if class_names is not None and _is_id(value) else str(value)
            if name not in lookup:
                raise DataError(f"{what} has label '{name}' that the training labels lack; training labels: "
                                f"{_preview(self.names)}")
            out.append(lookup[name])
        return out


def plan_labels(table: Any, column: str, model_labels: tuple[str, ...] | None, *, token_level: bool,
                new_head: bool) -> LabelPlan:
    """The LabelPlan for a training table's label column (see the module docstring for the rules)."""
    names = class_names(table, column)
    values = _distinct(table, column, token_level)
    if names is None and values and all(_is_id(v) for v in values):
        plan = _plan_ids(sorted(values), model_labels, new_head, column)
    else:
        data_names = tuple(names) if names is not None else tuple(sorted(str(v) for v in values))
        if model_labels and not new_head and set(data_names) <= set(model_labels):
            plan = LabelPlan(tuple(model_labels), new_head=False, source="model")
        else:
            plan = LabelPlan(data_names, new_head=True, source="classlabel" if names is not None else "sorted")
    return dataclasses.replace(plan, distinct=len(values))


def _plan_ids(ids: list[int], model_labels: tuple[str, ...] | None, new_head: bool, column: str) -> LabelPlan:
    if ids[0] < 0:
        raise DataError(f"column '{column}' holds label id {ids[0]}; ids must be 0 or more")
    if model_labels and not new_head:
        if ids[-1] >= len(model_labels):
            raise DataError(f"column '{column}' holds label id {ids[-1]} but the model has {len(model_labels)} "
                            f"labels (ids 0..{len(model_labels) - 1}: {_preview(model_labels)}); give names "
                            "instead of ids, or --new-head for a new head with ids 0.."
                            f"{ids[-1]}")
        return LabelPlan(tuple(model_labels), new_head=False, source="model")
    return LabelPlan(tuple(str(i) for i in range(ids[-1] + 1)), new_head=True, source="ids")


def class_names(table: Any, column: str) -> list[str] | None:
    """A ClassLabel feature's names (also inside a sequence of tags), else None."""
    import datasets

    feature = table.features[column]
    feature = getattr(feature, "feature", feature)  # Sequence / List of ClassLabel
    if isinstance(feature, list) and feature:
        feature = feature[0]
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _distinct(table: Any, column: str, token_level: bool) -> set[Any]:
    values = list(table[column])
    if token_level:
        if not all(isinstance(row, list) for row in values):
            raise DataError(f"column '{column}' must hold a list of tags per row for token classification; "
                            "name the tag column with --label-column")
        flat = {v for row in values for v in row}
    else:
        if any(isinstance(v, list) for v in values):
            raise DataError(f"column '{column}' holds lists (one tag per word): that is token classification; "
                            "give --task token-classification, or name a column of one label per row")
        flat = set(values)
    flat.discard(None)
    return flat


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _preview(names: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
