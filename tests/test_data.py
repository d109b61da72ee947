"""Training data: every format, builtin:digits, token classification, and each data error."""

from __future__ import annotations

import dataclasses
import json

import pytest

from zoo.errors import DataError

ROWS = [{"text": t, "label": l} for t, l in
        [("good film", "positive"), ("bad film", "negative"), ("great fun", "positive"),
         ("awful plot", "negative"), ("lovely", "positive"), ("boring", "negative")] * 3]


@pytest.fixture(scope="module")
def text_spec(tiny_text_classifier):
    from zoo.resolver import resolve

    return resolve(str(tiny_text_classifier))


@pytest.fixture(scope="module")
def image_spec(tiny_timm_folder):
    from zoo.resolver import resolve

    spec = resolve(str(tiny_timm_folder))
    pp = dataclasses.replace(spec.preprocess, input_size=(3, 24, 24))
    return dataclasses.replace(spec, preprocess=pp)


def write_rows(path, rows, fmt):
    import pandas as pd

    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def image_folder(root, labels=("cat", "dog", "bird"), per_label=4):
    import numpy as np
    from PIL import Image

    for i, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for j in range(per_label):
            pixels = np.full((20, 30, 3), 40 * i + j, dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{j}.png")
    return root


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_text_files_each_format(tmp_path, text_spec, fmt):
    from zoo.train.data import prepare_data

    path = write_rows(tmp_path / f"train.{fmt}", ROWS, fmt)
    data = prepare_data(str(path), text_spec, seed=0)
    assert data.labels == ("negative", "positive")
    assert data.sizes == {"train": 16, "validation": 2}
    batch = data.train.batch([0, 1, 2])
    assert batch["input_ids"].shape[0] == 3 and set(batch["labels"].tolist()) <= {0, 1}
    assert len(data.fingerprint) == 64


def test_seeded_split_is_repeatable_and_val_data_file_is_used(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    path = write_rows(tmp_path / "train.csv", ROWS, "csv")
    a, b = (prepare_data(str(path), text_spec, seed=3) for _ in range(2))
    assert a.val.rows == b.val.rows
    other = prepare_data(str(path), text_spec, seed=4)
    assert [r["input_ids"] for r in other.train.rows] != [r["input_ids"] for r in a.train.rows]
    val = write_rows(tmp_path / "val.csv", ROWS[:4], "csv")
    with_file = prepare_data(str(path), text_spec, val_data=str(val))
    assert with_file.sizes == {"train": 18, "validation": 4} and with_file.val_source.startswith("file")


def test_named_columns(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    rows = [{"review": r["text"], "stars": r["label"]} for r in ROWS]
    path = write_rows(tmp_path / "t.csv", rows, "csv")
    data = prepare_data(str(path), text_spec, text_column="review", label_column="stars")
    assert data.columns == {"input": "review", "label": "stars"}


def test_imagefolder_resizes_to_the_model_size(tmp_path, image_spec):
    from zoo.train.data import prepare_data

    data = prepare_data(str(image_folder(tmp_path / "imgs")), image_spec, val_fraction=0.25)
    assert data.labels == ("cat", "dog", "bird")  # the model's own labels, in its order
    assert not data.plan.new_head
    assert data.train.batch([0, 1])["pixel_values"].shape == (2, 3, 24, 24)
    assert data.sizes == {"train": 9, "validation": 3}


def test_save_to_disk_folder_with_its_own_validation_split(tmp_path, text_spec):
    import datasets

    from zoo.train.data import prepare_data

    table = datasets.Dataset.from_list(ROWS).class_encode_column("label")
    datasets.DatasetDict({"train": table, "validation": table.select(range(5))}).save_to_disk(tmp_path / "saved")
    data = prepare_data(str(tmp_path / "saved"), text_spec)
    assert data.val_source == "split validation" and data.sizes == {"train": 18, "validation": 5}
    assert data.labels == ("negative", "positive")


def test_builtin_digits_three_channels_at_model_size(image_spec):
    from zoo.train.data import prepare_data

    data = prepare_data("builtin:digits", image_spec, seed=0)
    assert data.labels == tuple(str(i) for i in range(10))
    assert data.sizes["train"] + data.sizes["validation"] == 1797
    pixels = data.train.batch(list(range(4)))["pixel_values"]
    assert pixels.shape == (4, 3, 24, 24)
    assert pixels.std() > 0.1  # real strokes, not a blank image


def test_token_classification_words_and_tags(tmp_path, registry):
    from tests.tiny import tiny_hf_folder
    from zoo.train.data import prepare_data
    from zoo.data.collate import IGNORE_INDEX
    from zoo.resolver import resolve_folder

    spec = resolve_folder(tiny_hf_folder(registry.get("bert-base"), tmp_path / "m"))
    spec = dataclasses.replace(spec, task="token-classification")
    rows = [{"words": ["Anna", "visited", "Zurichberg"], "tags": ["B-PER", "O", "B-LOC"]},
            {"words": ["Bob", "works"], "tags": ["B-PER", "O"]}] * 4
    path = write_rows(tmp_path / "ner.jsonl", rows, "jsonl")
    data = prepare_data(str(path), spec)
    assert data.labels == ("B-LOC", "B-PER", "O")
    row = next(r for r in data.train.rows + data.val.rows if len(r["labels"]) > 5)
    tagged = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tagged == [1, 2, 0]  # one tag per word, sub-word pieces ignored
    assert data.train.target_count([0]) == sum(t != IGNORE_INDEX for t in data.train.rows[0]["labels"])


# ---------------------------------------------------------------- labels: the model's own where they fit (issue 13)

CONLL = [{"tokens": ["John", "met", "Ann", "in", "Paris"], "ner_tags": [1, 0, 1, 0, 5]},
         {"tokens": ["Acme", "hired", "Bob"], "ner_tags": [3, 0, 1]}] * 4


@pytest.fixture(scope="module")
def ner_spec(ner_folder):
    from zoo.resolver import resolve

    return resolve(str(ner_folder))


def word_tags(data, row: int) -> list[int]:
    from zoo.data.collate import IGNORE_INDEX

    return [t for t in data.train.rows[row]["labels"] if t != IGNORE_INDEX]


def test_integer_tags_index_the_models_own_labels(tmp_path, ner_spec):
    """CoNLL-style integer ner_tags keep all 7 of the model's names (they became ['0','1','3','5'])."""
    from tests.tiny import NER_LABELS
    from zoo.train.data import prepare_data

    data = prepare_data(str(write_rows(tmp_path / "conll.jsonl", CONLL, "jsonl")), ner_spec, val_fraction=0.25)
    assert data.labels == NER_LABELS and not data.plan.new_head
    assert data.info()["label_source"] == "the model's own label set"
    assert {tuple(word_tags(data, i)) for i in range(len(data.train))} == {(1, 0, 1, 0, 5), (3, 0, 1)}


def test_string_tags_keep_the_pretrained_order(tmp_path, ner_spec):
    from tests.tiny import NER_LABELS
    from zoo.train.data import prepare_data

    rows = [{"tokens": r["tokens"], "ner_tags": [NER_LABELS[t] for t in r["ner_tags"]]} for r in CONLL]
    data = prepare_data(str(write_rows(tmp_path / "conll.jsonl", rows, "jsonl")), ner_spec, val_fraction=0.25)
    assert data.labels == NER_LABELS and not data.plan.new_head  # not sorted alphabetically
    assert {tuple(word_tags(data, i)) for i in range(len(data.train))} == {(1, 0, 1, 0, 5), (3, 0, 1)}


def test_classlabel_names_map_onto_the_models_labels_by_name(tmp_path, ner_spec):
    import datasets

    from tests.tiny import NER_LABELS
    from zoo.train.data import prepare_data

    names = ["O", "B-LOC", "B-PER", "B-ORG"]  # the data's own ids: B-LOC is 1 here, 5 in the model
    remap = {0: 0, 1: 2, 5: 1, 3: 3}
    rows = [{"tokens": r["tokens"], "ner_tags": [remap[t] for t in r["ner_tags"]]} for r in CONLL]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(tmp_path / "saved")
    data = prepare_data(str(tmp_path / "saved"), ner_spec, val_fraction=0.25)
    assert data.labels == NER_LABELS and not data.plan.new_head
    assert {tuple(word_tags(data, i)) for i in range(len(data.train))} == {(1, 0, 1, 0, 5), (3, 0, 1)}


def test_labels_the_model_lacks_or_new_head_give_the_datas_sorted_labels(tmp_path, ner_spec):
    from zoo.train.data import prepare_data

    rows = [{"tokens": ["Rome", "won"], "ner_tags": ["B-MISC", "O"]}, {"tokens": ["Ann"], "ner_tags": ["B-PER"]}] * 4
    data = prepare_data(str(write_rows(tmp_path / "misc.jsonl", rows, "jsonl")), ner_spec, val_fraction=0.25)
    assert data.labels == ("B-MISC", "B-PER", "O") and data.plan.new_head
    asked = write_rows(tmp_path / "known.jsonl", [{"tokens": ["Ann", "ran"], "ner_tags": ["B-PER", "O"]}] * 4, "jsonl")
    data = prepare_data(str(asked), ner_spec, val_fraction=0.25, new_head=True)
    assert data.labels == ("B-PER", "O") and data.plan.new_head


def test_integer_ids_beyond_the_models_labels(tmp_path, ner_spec):
    from zoo.train.data import prepare_data

    rows = [{"tokens": ["a", "b"], "ner_tags": [0, 9]}] * 4
    path = write_rows(tmp_path / "ids.jsonl", rows, "jsonl")
    with pytest.raises(DataError, match=r"label id 9 but the model has 7 labels .* --new-head"):
        prepare_data(str(path), ner_spec, val_fraction=0.25)
    data = prepare_data(str(path), ner_spec, val_fraction=0.25, new_head=True)  # the way out it names
    assert data.labels == tuple(str(i) for i in range(10)) and data.plan.new_head


def test_integer_labels_of_a_text_classifier_name_its_classes(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    rows = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in ROWS]
    data = prepare_data(str(write_rows(tmp_path / "ids.csv", rows, "csv")), text_spec)
    assert data.labels == ("negative", "positive") and not data.plan.new_head


def test_a_list_column_for_one_label_per_row_names_the_task(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    rows = [{"text": "Ann ran", "label": [1, 0]}] * 4
    with pytest.raises(DataError, match="holds lists .* give --task token-classification"):
        prepare_data(str(write_rows(tmp_path / "t.jsonl", rows, "jsonl")), text_spec)


# ---------------------------------------------------------------- errors (each with its working twin above)


def test_missing_file(text_spec):
    from zoo.train.data import prepare_data

    with pytest.raises(DataError, match="does not exist"):
        prepare_data("./no/such/train.csv", text_spec)


def test_unknown_column(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    path = write_rows(tmp_path / "t.csv", ROWS, "csv")
    with pytest.raises(DataError, match="--label-column stars: no such column; the data has columns: text, label"):
        prepare_data(str(path), text_spec, label_column="stars")


def test_too_few_labels(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    path = write_rows(tmp_path / "t.csv", [{"text": "x", "label": "positive"}] * 6, "csv")
    with pytest.raises(DataError, match="1 distinct label"):
        prepare_data(str(path), text_spec)


def test_empty_split(tmp_path, text_spec):
    from zoo.train.data import prepare_data

    train = write_rows(tmp_path / "t.csv", ROWS, "csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="empty.csv' is empty"):
        prepare_data(str(train), text_spec, val_data=str(empty))
    with pytest.raises(DataError, match="empty.csv' is empty"):
        prepare_data(str(empty), text_spec)
    with pytest.raises(DataError, match="has 1 row"):
        prepare_data(str(write_rows(tmp_path / "one.csv", ROWS[:1], "csv")), text_spec)
    with pytest.raises(DataError, match="--split dev is not in"):
        prepare_data(str(train), text_spec, split="dev")


def test_unknown_builtin(image_spec):
    from zoo.train.data import prepare_data

    with pytest.raises(DataError, match="valid: builtin:digits"):
        prepare_data("builtin:mnist", image_spec)
