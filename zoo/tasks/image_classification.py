"""image-classification: one label per image (timm models, transformers ``*ForImageClassification``).

    zoo export resnet50 --onnx --random-init
    zoo predict artifacts/resnet50 cat.jpg --top-k 5
"""

from __future__ import annotations

from typing import Any, ClassVar

from zoo.spec import ModelSpec
from zoo.tasks._classify import LABEL_COLUMNS, Classifier
from zoo.tasks._image import ImageTask
from zoo.tasks.base import choose_column


class ImageClassification(Classifier, ImageTask):
    name: ClassVar[str] = "image-classification"
    summary: ClassVar[str] = "one label per image"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForImageClassification", "ForImageClassificationWithTeacher")
    hf_auto_class: ClassVar[str | None] = "AutoModelForImageClassification"
    timm: ClassVar[bool] = True
    timm_default: ClassVar[bool] = True

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.data.builtin import digits

        return {"digits": digits}

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        image = self.image_column(table, input_column)
        usual = [n for n in LABEL_COLUMNS if n != image]
        return {"input": image, "label": choose_column(list(table.column_names), label_column, usual, "label",
                                                       "--label-column")}

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.data import encode

        return encode.images(table, columns, labels, spec.preprocess, what)


TASK = ImageClassification()
