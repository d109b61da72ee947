"""text-classification: one label per text (transformers ``*ForSequenceClassification``).

    zoo finetune bert-base --data reviews.csv --text-column text --label-column label
    zoo predict artifacts/sst2 "I loved it" --top-k 2
"""

from __future__ import annotations

from typing import Any, ClassVar

from zoo.spec import ModelSpec
from zoo.tasks._classify import LABEL_COLUMNS, Classifier
from zoo.tasks._text import TEXT_COLUMNS, TextTask
from zoo.tasks.base import choose_column


class TextClassification(Classifier, TextTask):
    name: ClassVar[str] = "text-classification"
    summary: ClassVar[str] = "one label per text"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForSequenceClassification",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForSequenceClassification"

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        names = list(table.column_names)
        text = choose_column(names, input_column, TEXT_COLUMNS, "text", "--text-column")
        usual = [n for n in LABEL_COLUMNS if n != text]
        return {"input": text, "label": choose_column(names, label_column, usual, "label", "--label-column")}

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.data import encode

        return encode.texts(table, columns, labels, processor, max_length, what)


TASK = TextClassification()
