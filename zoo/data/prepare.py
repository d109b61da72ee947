"""Columns, labels and splits: from raw HF ``Dataset`` splits to encoded examples.

Labels come from the data (a ``ClassLabel`` feature's names, else the sorted
distinct values) and are written into the fine-tuned model, so its predictions
carry names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.data.files import VAL_SPLITS, RawData, load_raw
from zoo.errors import DataError
from zoo.spec import ModelSpec

IMAGE_COLUMNS = ("image", "img", "picture", "pixel_values")
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")
WORD_COLUMNS = ("tokens", "words")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label")


@dataclass
class PreparedData:
    name: str
    fingerprint: str
    task: str
    labels: tuple[str, ...]
    train: Any  # ImageExamples | TextExamples
    val: Any
    columns: dict[str, str]
    val_source: str
    sizes: dict[str, int] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """What run.json records about the data."""
        return {"name": self.name, "fingerprint": self.fingerprint, "sizes": self.sizes,
                "labels": list(self.labels), "columns": self.columns, "validation": self.val_source}


def prepare_data(data: str, spec: ModelSpec, *, text_column: str | None = None, label_column: str | None = None,
                 split: str | None = None, val_data: str | None = None, val_fraction: float = 0.1,
                 seed: int = 0, max_length: int = 128) -> PreparedData:
    """Load ``data``, pick its columns for ``spec.task``, read labels, encode both splits."""
    raw = load_raw(data)
    train, val, val_source = _splits(raw, split, val_data, val_fraction, seed)
    columns = pick_columns(train, spec.task, text_column, label_column)
    labels = read_labels(train, columns["label"], token_level=spec.task == "token-classification")
    if len(labels) < 2:
        raise DataError(f"column '{columns['label']}' of {data} holds {len(labels)} distinct label(s) "
                        f"({', '.join(labels) or 'none'}); classification needs at least 2")
    _check_columns(val, columns, "validation data")
    encode = _encoder(spec, columns, labels, max_length)
    return PreparedData(name=raw.name, fingerprint=raw.fingerprint, task=spec.task, labels=labels,
                        train=encode(train, "train"), val=encode(val, "validation"), columns=columns,
                        val_source=val_source, sizes={"train": len(train), "validation": len(val)})


def _splits(raw: RawData, split: str | None, val_data: str | None, fraction: float,
            seed: int) -> tuple[Any, Any, str]:
    train_name = split or ("train" if "train" in raw.splits or len(raw.splits) != 1 else next(iter(raw.splits)))
    if train_name not in raw.splits:
        raise DataError(f"--split {train_name} is not in {raw.name}; its splits are: {', '.join(raw.splits)}")
    train = _non_empty(raw.splits[train_name], f"split '{train_name}' of {raw.name}")
    if val_data:
        other = load_raw(val_data)
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


def pick_columns(table: Any, task: str, text_column: str | None, label_column: str | None) -> dict[str, str]:
    """The input and label columns for ``task``: the ones named, else the usual names."""
    import datasets

    names = list(table.column_names)
    if task == "image-classification":
        images = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
        inputs = _choose(names, text_column, images + [n for n in IMAGE_COLUMNS if n in names], "image", "--text-column")
    elif task == "token-classification":
        inputs = _choose(names, text_column, WORD_COLUMNS, "words", "--text-column")
    elif task == "text-classification":
        inputs = _choose(names, text_column, TEXT_COLUMNS, "text", "--text-column")
    else:
        raise DataError(f"zoo finetune trains classifiers; this model's task is {task}. Valid tasks: "
                        "image-classification, text-classification, token-classification")
    wanted = TAG_COLUMNS if task == "token-classification" else LABEL_COLUMNS
    label = _choose(names, label_column, [n for n in wanted if n != inputs], "label", "--label-column")
    return {"input": inputs, "label": label}


def _choose(names: list[str], given: str | None, usual: Any, kind: str, flag: str) -> str:
    if given is not None:
        if given not in names:
            raise DataError(f"{flag} {given}: no such column; the data has columns: {', '.join(names)}")
        return given
    for name in usual:
        if name in names:
            return name
    raise DataError(f"no {kind} column found among: {', '.join(names)}; name it with {flag} COLUMN")


def _check_columns(table: Any, columns: dict[str, str], what: str) -> None:
    missing = [c for c in columns.values() if c not in table.column_names]
    if missing:
        raise DataError(f"{what} lacks column(s) {', '.join(missing)}; it has: {', '.join(table.column_names)}")


def read_labels(table: Any, column: str, *, token_level: bool) -> tuple[str, ...]:
    """Label names: a ClassLabel's names, else the distinct values in sorted order."""
    import datasets

    feature = table.features[column]
    inner = getattr(feature, "feature", None) if token_level else feature
    if isinstance(inner, list) and inner:  # datasets' List feature over a ClassLabel
        inner = inner[0]
    if isinstance(inner, datasets.ClassLabel):
        return tuple(inner.names)
    values = list(table[column])
    flat = {v for row in values for v in row} if token_level else set(values)
    flat.discard(None)
    return tuple(str(v) for v in sorted(flat, key=lambda v: (isinstance(v, str), v)))


def _encoder(spec: ModelSpec, columns: dict[str, str], labels: tuple[str, ...], max_length: int) -> Any:
    from zoo.data import encode

    if spec.task == "image-classification":
        return lambda table, what: encode.images(table, columns, labels, spec.preprocess, what)
    from zoo.sources.hf import load_tokenizer

    tokenizer = load_tokenizer(spec)
    length = min(max_length, spec.preprocess.max_length or max_length)
    token_level = spec.task == "token-classification"
    return lambda table, what: encode.text(table, columns, labels, tokenizer, length, token_level, what)
