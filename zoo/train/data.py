"""Training data: ``prepare_data(data, spec, ...)`` -> labelled, encoded train/validation splits.

``zoo.data`` reads files (HF datasets: CSV/JSON/JSONL/Parquet, imagefolder,
save_to_disk, hub names); which columns hold the input and the label, how labels
are read and how rows are encoded is the task's business (``zoo.tasks``); this
module, above both, finds the splits and checks what every task needs. Which label names the model ends
up with, and whether it keeps its pretrained head, is ``zoo.data.labels``'s
rule; the names are written into the fine-tuned model, so its predictions carry
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo import sources
from zoo.data.files import VAL_SPLITS, RawData, load_raw
from zoo.data.labels import LabelPlan
from zoo.errors import DataError
from zoo.spec import ModelSpec


@dataclass
class PreparedData:
    name: str
    fingerprint: str
    task: str
    plan: LabelPlan
    train: Any  # ImageExamples | TextExamples
    val: Any
    columns: dict[str, str]
    val_source: str
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.plan.names

    def info(self) -> dict[str, Any]:
        """What run.json records about the data."""
        return {"name": self.name, "fingerprint": self.fingerprint, "sizes": self.sizes, **self.plan.info(),
                "columns": self.columns, "validation": self.val_source}


def prepare_data(data: str, spec: ModelSpec, *, text_column: str | None = None, label_column: str | None = None,
                 split: str | None = None, val_data: str | None = None, val_fraction: float = 0.1,
                 seed: int = 0, max_length: int = 128, new_head: bool = False,
                 packing: bool = False) -> PreparedData:
    """Load ``data``, let ``spec``'s task pick its columns and plan the labels, encode both splits.

    ``packing`` (text-generation): several training examples per row of ``max_length`` tokens; the
    validation rows stay one example each, so each can be scored on its own.
    """
    from zoo.tasks import get_task

    task = get_task(spec.task)
    raw = load_raw(data, task)
    train, val, val_source = _splits(raw, split, val_data, val_fraction, seed, task)
    columns = task.data_columns(train, text_column, label_column)
    plan = task.read_labels(train, columns.get("label", ""), spec, new_head)
    if task.has_labels and plan.distinct < 2:
        raise DataError(f"column '{columns['label']}' of {data} holds {plan.distinct} distinct label(s); "
                        "classification needs at least 2")
    _check_columns(val, columns, "validation data")
    processor = sources.load_processor(spec)
    length = min(max_length, spec.preprocess.max_length or max_length)

    def encode(table: Any, what: str) -> Any:
        return task.encode(table, columns, plan, spec, processor, length, what)

    train_examples = encode(train, "train")
    if packing:
        train_examples = train_examples.packed_to(length)
    return PreparedData(name=raw.name, fingerprint=raw.fingerprint, task=spec.task, plan=plan,
                        train=train_examples, val=encode(val, "validation"), columns=columns,
                        val_source=val_source, sizes={"train": len(train), "validation": len(val)})


def validation_split(data: str, task: Any, *, split: str | None = None, val_data: str | None = None,
                     val_fraction: float = 0.1, seed: int = 0) -> tuple[Any, str]:
    """The raw validation rows ``prepare_data`` holds out for these options (same rule, same seed), and
    where they came from; ``zoo optimize`` judges a fine-tuned artifact on exactly these rows."""
    _, val, source = _splits(load_raw(data, task), split, val_data, val_fraction, seed, task)
    return val, source


def _splits(raw: RawData, split: str | None, val_data: str | None, fraction: float,
            seed: int, task: Any) -> tuple[Any, Any, str]:
    train_name = split or ("train" if "train" in raw.splits or len(raw.splits) != 1 else next(iter(raw.splits)))
    if train_name not in raw.splits:
        raise DataError(f"--split {train_name} is not in {raw.name}; its splits are: {', '.join(raw.splits)}")
    train = _non_empty(raw.splits[train_name], f"split '{train_name}' of {raw.name}")
    if val_data:
        other = load_raw(val_data, task)
        name = "validation" if "validation" in other.splits else next(iter(other.splits))
        return train, _non_empty(other.splits[name], f"--val-data {val_data}"), f"file {val_data}"
    for name in VAL_SPLITS:
        if name in raw.splits and name != train_name:
            return train, _non_empty(raw.splits[name], f"split '{name}' of {raw.name}"), f"split {name}"
    if len(train) < 2:
        raise DataError(f"split '{train_name}' of {raw.name} has {len(train)} row(s); a seeded validation "
                        "split needs at least 2 (or give --val-data FILE)")
    parts = train.train_test_split(test_size=max(1, round(len(train) * fraction)), seed=seed, shuffle=True)
    return parts["train"], parts["test"], f"seeded {fraction:.0%} of {train_name} (seed {seed})"


def _non_empty(table: Any, what: str) -> Any:
    if len(table) == 0:
        raise DataError(f"{what} is empty (0 rows); give data with rows, or another --split")
    return table


def _check_columns(table: Any, columns: dict[str, str], what: str) -> None:
    missing = [c for c in columns.values() if c not in table.column_names]
    if missing:
        raise DataError(f"{what} lacks column(s) {', '.join(missing)}; it has: {', '.join(table.column_names)}")
