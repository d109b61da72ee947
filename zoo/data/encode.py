"""Raw rows to tensors: images resized once to the model's input size, text tokenised once."""

from __future__ import annotations

from typing import Any

import torch

from zoo.data.collate import IGNORE_INDEX, ImageExamples, TextExamples
from zoo.data.images import decoded_images
from zoo.data.labels import LabelPlan, class_names
from zoo.errors import DataError
from zoo.spec import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def label_indices(table: Any, column: str, plan: LabelPlan, what: str) -> list[int]:
    """One table's label values (ids, ClassLabel ints or names) as head positions."""
    return plan.indices(list(table[column]), class_names(table, column), what)


def images(table: Any, columns: dict[str, str], labels: LabelPlan, pp: Preprocess, what: str) -> ImageExamples:
    from timm.data.transforms_factory import transforms_imagenet_eval

    channels, height, width = pp.input_size or (3, 224, 224)
    # normalize=False: keep uint8 and normalise per batch (see collate.py)
    transform = transforms_imagenet_eval(img_size=(height, width), crop_pct=pp.crop_pct, crop_mode=pp.crop_mode,
                                         interpolation=pp.interpolation or "bilinear", normalize=False)
    mode = "RGB" if channels == 3 else "L"
    decoded = decoded_images(table, columns["input"], what)
    pixels = torch.stack([_to_tensor(transform(img.convert(mode))) for img in decoded])
    targets = torch.tensor(label_indices(table, columns["label"], labels, what))
    return ImageExamples(pixels, targets, pp.mean or IMAGENET_MEAN, pp.std or IMAGENET_STD)


def _to_tensor(image: Any) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else torch.as_tensor(image)


def texts(table: Any, columns: dict[str, str], labels: LabelPlan, tokenizer: Any, max_length: int,
          what: str) -> TextExamples:
    """One label per text."""
    inputs = list(table[columns["input"]])
    if not all(isinstance(t, str) for t in inputs):
        raise DataError(f"column '{columns['input']}' of {what} must hold text; name the text column "
                        "with --text-column")
    encoded = tokenizer(inputs, truncation=True, max_length=max_length)
    targets = label_indices(table, columns["label"], labels, what)
    rows = [{**{k: encoded[k][i] for k in encoded.keys()}, "labels": targets[i]} for i in range(len(inputs))]
    return TextExamples(rows, tokenizer, token_level=False)


def tagged_texts(table: Any, columns: dict[str, str], labels: LabelPlan, tokenizer: Any, max_length: int,
                 what: str) -> TextExamples:
    """Word/tag rows: the first sub-word of each word carries its tag, the rest are ignored."""
    words, tags = list(table[columns["input"]]), list(table[columns["label"]])
    if not all(isinstance(w, list) for w in words):
        raise DataError(f"column '{columns['input']}' of {what} must hold lists of words for token "
                        "classification; name it with --text-column")
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    names = class_names(table, columns["label"])
    rows = []
    for i, row_tags in enumerate(tags):
        if len(row_tags) != len(words[i]):
            raise DataError(f"row {i} of {what} has {len(words[i])} words but {len(row_tags)} tags; "
                            "every word needs one tag")
        targets = labels.indices(list(row_tags), names, what)
        row = {k: encoded[k][i] for k in encoded.keys()}
        row["labels"] = _align(encoded.word_ids(i), targets)
        rows.append(row)
    return TextExamples(rows, tokenizer, token_level=True)


def _align(word_ids: list[int | None], targets: list[int]) -> list[int]:
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE_INDEX if word is None or word == previous else targets[word])
        previous = word
    return out
