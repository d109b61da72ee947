"""depth-estimation: a depth value per pixel (transformers ``*ForDepthEstimation``: DPT, Depth Anything).

    zoo export depth-anything-v2-small --onnx --out artifacts/depth
    zoo predict artifacts/depth room.jpg --save room-depth.png

The graph returns the model's ``predicted_depth`` (batch, h, w) at the resolution the
processor resized to (Depth Anything keeps the picture's aspect ratio, so its height
and width are dynamic). The runtime preprocesses with Pillow and numpy (``_dense``)
and resizes each map to its picture's size bicubically, as
``post_process_depth_estimation(outputs, target_sizes=...)`` and the depth-estimation
pipeline do, and returns a ``DepthMap``. What the values mean is the model's: relative
inverse depth (disparity) for Depth Anything and DPT's MiDaS checkpoints, metres for
metric fine-tunes. ``--save`` writes a 16-bit PNG of the map (its range stretched to
0..65535) and a coloured preview beside it. Export checks both torch-free halves
against transformers and the depth's relative error against torch (``_depth_verify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import UnsupportedTaskError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._dense import DenseTask
from zoo.tasks.base import Case, choose_column


@dataclass(frozen=True, eq=False)
class DepthMap:
    """One picture's depth: ``depth`` (height, width) float32, in the model's own unit."""

    depth: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return int(self.depth.shape[0]), int(self.depth.shape[1])

    def __repr__(self) -> str:
        return f"DepthMap(size={self.size}, min={float(self.depth.min()):.4g}, max={float(self.depth.max()):.4g})"

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.size[0], "width": self.size[1], "min": float(self.depth.min()),
                "max": float(self.depth.max()), "depth": self.depth.tolist()}


class DepthEstimation(DenseTask):
    name: ClassVar[str] = "depth-estimation"
    summary: ClassVar[str] = "a depth value per pixel"
    what: ClassVar[str] = "depth estimation"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForDepthEstimation",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForDepthEstimation"
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_delta1"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_delta1", "val_abs_rel")

    # ------------------------------------------------------------ export

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        from zoo.tasks._depth_torch import allow_dynamic_size

        allow_dynamic_size(spec.arch)
        return super().export_module(model, spec)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("predicted_depth",)

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"predicted_depth": ["batch", *self.map_axes(spec)]}

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        from zoo.tasks._dense import preprocessing_check
        from zoo.tasks._depth_verify import postprocessing_check

        return [preprocessing_check(stage, cases), postprocessing_check(stage, cases, references)]

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        from zoo.tasks._depth_verify import DepthAgreement

        return DepthAgreement()

    def optimization_gate(self, tol: Tolerances) -> Any:
        """Refused: zoo optimize's gate compares vectors or labels, not depth maps."""
        raise UnsupportedTaskError("zoo optimize does not judge depth models yet: its accuracy gate has no "
                                   "depth comparison; use the exported artifact as it is")

    # ------------------------------------------------------------ runtime

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks._dense import depth_map

        return [DepthMap(depth_map(depth, size))
                for depth, size in zip(outputs["predicted_depth"], batch.sizes)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "size", "min", "median", "max"):
            table.add_column(column, justify="left" if column == "input" else "right")
        for item, result in zip(inputs, results):
            depth = result.depth
            table.add_row(escape(item), f"{result.size[1]}x{result.size[0]}", f"{float(depth.min()):.4g}",
                          f"{float(np.median(depth)):.4g}", f"{float(depth.max()):.4g}")
        return table

    def save_pictures(self, inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
        from zoo.tasks._depth_draw import save_pictures

        return save_pictures(inputs, results, Path(folder))

    # ------------------------------------------------------------ data and training

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._depth_data import shapes

        return {"shapes": shapes}

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._depth_data import DEPTH_COLUMNS

        image = self.image_column(table, input_column)
        return {"input": image, "label": choose_column(list(table.column_names), label_column, DEPTH_COLUMNS,
                                                       "depth map", "--label-column")}

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        """Depth has no classes: the model's head is always kept."""
        from zoo.data.labels import LabelPlan

        return LabelPlan((), new_head=False, source="model")

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks._depth_data import DepthExamples

        return DepthExamples.checked(table, columns, processor, what)

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._depth_torch import training_loss

        return training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._depth_torch import eval_batch

        return eval_batch(runner, batch, inputs, rows)

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._depth_data import depth_metrics

        return depth_metrics(records)


TASK = DepthEstimation()
