"""image-segmentation (semantic): one class per pixel (transformers ``*ForSemanticSegmentation``: SegFormer, UperNet).

    zoo finetune ./segformer-tiny --data builtin:shapes --out runs/seg
    zoo export runs/seg --onnx --out artifacts/seg
    zoo predict artifacts/seg street.jpg --save street-mask.png

The graph returns the model's raw ``logits`` (batch, classes, h, w) at the model's
own resolution (a quarter of the input for SegFormer). The artifact carries the
processor's ``preprocessor_config.json``; the runtime resizes and normalises with
Pillow and numpy (``_dense``), upsamples each picture's logits to the picture's own
size bilinearly and takes the argmax, as ``post_process_semantic_segmentation(
outputs, target_sizes=...)`` does, and returns a ``Segmentation``: the label map,
the label names and each present class's pixel count. Export checks both torch-free
halves against transformers and the per-pixel agreement of torch and onnxruntime
(``_segmentation_verify``).

Fine-tuning uses the model's own loss (cross-entropy on the logits upsampled to the
mask, 255 ignored); validation reports mean IoU (``val_mean_iou``) and pixel accuracy.
Masks follow ADE20K's convention, which SegFormer's processor defines with
``do_reduce_labels``: 0 is unlabelled (ignored), value k is class k - 1. Data: an
ADE20K-style folder (``images/`` and ``annotations/``, PNG masks with the same
stems, optionally split into ``training/`` and ``validation/``, class names in
``labels.txt``) and ``builtin:shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import UnsupportedTaskError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._classify import label_name, labels_from_config
from zoo.tasks._dense import DenseTask
from zoo.tasks.base import Case, choose_column

MASK_COLUMNS = ("annotation", "mask", "label", "segmentation")


@dataclass(frozen=True, eq=False)
class Segmentation:
    """One picture's class per pixel: ``label_map`` (height, width) of class ids into ``labels``."""

    label_map: np.ndarray
    labels: tuple[str, ...]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.label_map.shape[0]), int(self.label_map.shape[1])

    def counts(self) -> dict[int, int]:
        """Pixels per class present, the largest first."""
        ids, pixels = np.unique(self.label_map, return_counts=True)
        order = np.argsort(-pixels, kind="stable")
        return {int(ids[i]): int(pixels[i]) for i in order}

    def __repr__(self) -> str:
        top = ", ".join(f"{label_name(self.labels, c)} {n}" for c, n in list(self.counts().items())[:3])
        return f"Segmentation(size={self.size}, pixels: {top})"

    def to_dict(self) -> dict[str, Any]:
        total = self.label_map.size
        return {"height": self.size[0], "width": self.size[1],
                "segments": [{"label": label_name(self.labels, c), "label_id": c, "pixels": n, "share": n / total}
                             for c, n in self.counts().items()],
                "label_map": self.label_map.tolist()}


class ImageSegmentation(DenseTask):
    name: ClassVar[str] = "image-segmentation"
    summary: ClassVar[str] = "one class per pixel (semantic segmentation)"
    what: ClassVar[str] = "segmentation"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForSemanticSegmentation",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForSemanticSegmentation"
    # classes are labels, but not a classifier's: prepare's two-class minimum and zoo bench's logits guess do not apply
    has_labels: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_mean_iou"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_mean_iou", "val_accuracy")

    # ------------------------------------------------------------ identity / sources

    def labels_from_config(self, config: dict[str, Any]) -> tuple[str, ...] | None:
        return labels_from_config(config)

    # ------------------------------------------------------------ export

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("logits",)

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"logits": ["batch", None, *self.map_axes(spec)]}

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        from zoo.tasks._dense import preprocessing_check
        from zoo.tasks._segmentation_verify import postprocessing_check

        return [preprocessing_check(stage, cases), postprocessing_check(stage, cases, references)]

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        from zoo.tasks._segmentation_verify import PixelAgreement

        return PixelAgreement()

    def optimization_gate(self, tol: Tolerances) -> Any:
        """Refused: zoo optimize's gate compares vectors or top-1 labels, not per-pixel class maps."""
        raise UnsupportedTaskError("zoo optimize does not judge segmentation models yet: its accuracy gate has no "
                                   "per-pixel comparison; use the exported artifact as it is")

    # ------------------------------------------------------------ runtime

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks._dense import class_map

        names = tuple(labels or ())
        return [Segmentation(class_map(logits, size), names) for logits, size in zip(outputs["logits"], batch.sizes)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "size", "class", "pixels", "share"):
            table.add_column(column, justify="right" if column in ("pixels", "share") else "left")
        for item, result in zip(inputs, results):
            total = result.label_map.size
            for rank, (class_id, pixels) in enumerate(result.counts().items()):
                first = rank == 0
                table.add_row(escape(item) if first else "", f"{result.size[1]}x{result.size[0]}" if first else "",
                              escape(label_name(result.labels, class_id)), str(pixels), f"{pixels / total:.1%}")
        return table

    def save_pictures(self, inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
        from zoo.tasks._segmentation_draw import save_pictures

        return save_pictures(inputs, results, Path(folder))

    # ------------------------------------------------------------ data

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._segmentation_data import shapes

        return {"shapes": shapes}

    def read_data(self, data: str) -> dict[str, Any] | None:
        from zoo.tasks._segmentation_data import find_ade, read_ade

        found = find_ade(data)
        return None if found is None else read_ade(found)

    # ------------------------------------------------------------ training

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        image = self.image_column(table, input_column)
        usual = [n for n in MASK_COLUMNS if n != image]
        return {"input": image, "label": choose_column(list(table.column_names), label_column, usual,
                                                       "mask (class-index picture)", "--label-column")}

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.tasks._segmentation_data import plan_labels

        return plan_labels(table, column, spec, new_head)

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks._segmentation_data import SegmentationExamples

        return SegmentationExamples.checked(table, columns, len(labels.names), processor, what)

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._segmentation_torch import training_loss

        return training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._segmentation_torch import eval_batch

        return eval_batch(runner, batch, inputs, rows)

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._segmentation_data import mean_iou

        return mean_iou(records, len(labels))


TASK = ImageSegmentation()
