"""object-detection: boxes with labels and scores (transformers ``*ForObjectDetection``: DETR, RT-DETR, YOLOS).

    zoo finetune ./detr-small --data builtin:shapes --out runs/shapes
    zoo export runs/shapes --onnx --out artifacts/shapes
    zoo predict artifacts/shapes street.jpg --threshold 0.5 --save pictures/

The graph returns the model's raw ``logits`` and ``pred_boxes`` (dynamic batch;
dynamic height and width where the image processor pads pictures of any size,
with the ``pixel_mask`` DETR takes). The artifact carries the processor's
``preprocessor_config.json`` and, under ``preprocess.detection``, how the
family's scores decode (softmax with a no-object class, or sigmoid + top-k).
The runtime resizes, normalises and pads with Pillow and numpy and returns,
per picture, what ``post_process_object_detection`` returns: scores, labels and
(x0, y0, x1, y1) boxes in pixels of the original picture. Export checks both
torch-free halves against transformers (see ``_detection_verify``).

Fine-tuning uses the model's own set loss; validation reports COCO mAP@[.5:.95]
(``val_map``) and mAP@.5 (``val_map50``) from pycocotools. Data: COCO folders
(``instances.json`` + ``images/``), the HF object-detection layout
(``image`` + ``objects: {bbox, category}``) and ``builtin:shapes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError, DataError, InputError, UnsupportedTaskError
from zoo.spec import InputSpec, ModelSpec, Preprocess, Tolerances
from zoo.tasks._classify import label_name, labels_from_config
from zoo.tasks._detection_postprocess import Decoding
from zoo.tasks._image import ImageTask
from zoo.tasks._memory import (ACTIVATION_COPIES, ATTENTION_COPIES, ModelDims, input_terms, patch_tokens, pixel_terms,
                               transformer_terms)
from zoo.tasks.base import Case, choose_column

# model_type -> how its scores decode and whether it takes a pixel_mask
FAMILIES: dict[str, tuple[str, bool]] = {"detr": ("softmax", True), "yolos": ("softmax", False),
                                         "rt_detr": ("sigmoid", False)}
OBJECT_COLUMNS = ("objects", "annotations", "objects_list")
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Detection:
    """One object found: its label, score and (x0, y0, x1, y1) box in pixels of the original picture."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    label_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "label_id": self.label_id, "score": self.score, "box": list(self.box)}


@dataclass(frozen=True)
class Detections:
    """Everything found in one picture, in the order transformers returns it; iterate it like a tuple."""

    detections: tuple[Detection, ...]
    size: tuple[int, int]  # the picture's (height, width)

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    def __len__(self) -> int:
        return len(self.detections)

    def __getitem__(self, index: int) -> Detection:
        return self.detections[index]

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.size[0], "width": self.size[1], "detections": [d.to_dict() for d in self]}


def family(spec_or_type: ModelSpec | str) -> tuple[str, bool]:
    """(scoring, takes pixel_mask) of a model type; unsupported types are refused, naming the supported ones."""
    model_type = spec_or_type.arch if isinstance(spec_or_type, ModelSpec) else spec_or_type
    if model_type not in FAMILIES:
        raise UnsupportedTaskError(f"object detection with model_type '{model_type}' is not supported; zoo decodes "
                                   f"the boxes of: {', '.join(FAMILIES)} (DETR, YOLOS, RT-DETR)")
    return FAMILIES[model_type]


def decoding_for(spec: ModelSpec) -> Decoding:
    return Decoding(scores=family(spec)[0])


def detection_inputs(takes_mask: bool, fixed: tuple[int, int] | None) -> tuple[InputSpec, ...]:
    height, width = fixed or ("height", "width")
    pixels = InputSpec("pixel_values", "float32", ("batch", 3, height, width))
    return (pixels, InputSpec("pixel_mask", "int64", ("batch", height, width))) if takes_mask else (pixels,)


class ObjectDetection(ImageTask):
    name: ClassVar[str] = "object-detection"
    summary: ClassVar[str] = "boxes with labels and scores"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForObjectDetection",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForObjectDetection"
    # category names are labels, but not a classifier's: prepare's two-class minimum and the
    # logits-width guess of zoo bench do not apply (one category is a valid detector)
    has_labels: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_map"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_map", "val_map50")
    predict_options: ClassVar[dict[str, type]] = {"threshold": float}

    # ------------------------------------------------------------ identity / sources

    def labels_from_config(self, config: dict[str, Any]) -> tuple[str, ...] | None:
        return labels_from_config(config)

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        _, takes_mask = family(str(config.get("model_type", "")))
        steps = _processor_steps(folder)
        return (detection_inputs(takes_mask, steps.fixed_size), nominal_preprocess(steps),
                self.labels_from_config(config))

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        """The model's transformers image processor (PIL backend), at the size the spec trains or exports."""
        from transformers import AutoImageProcessor

        steps = _processor_steps(folder)
        return AutoImageProcessor.from_pretrained(str(folder), backend="pil", **_size_override(steps, spec))

    # ------------------------------------------------------------ export

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        from zoo.tasks._detection_torch import allow_dynamic_batch

        allow_dynamic_batch(spec.arch)
        return super().export_module(model, spec)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("logits", "pred_boxes")

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"logits": ["batch", None, None], "pred_boxes": ["batch", None, None]}

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        return {"height": 4096, "width": 4096}

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        from zoo.tasks._detection_verify import processor_inputs, scenes

        # two pictures of other sizes than the grid's, so the grid checks shapes the trace never saw
        return processor_inputs(processor, scenes(1234, ((70, 110), (120, 90))), [i.name for i in spec.inputs])

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        from zoo.tasks._detection_verify import grid

        return grid(processor, [i.name for i in spec.inputs], seeds)

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        from zoo.tasks._detection_preprocess import CONFIG_FILE

        processor.save_pretrained(str(stage))
        record: dict[str, Any] = dataclasses.asdict(spec.preprocess)
        record.update(files=[CONFIG_FILE], detection=decoding_for(spec).to_dict())
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        from zoo.tasks._detection_verify import postprocessing_check, preprocessing_check

        names = list(cases[0].inputs) if cases else []
        return [preprocessing_check(stage, names, cases),
                postprocessing_check(stage, Decoding.from_dict(record.get("detection")), cases, references)]

    # ------------------------------------------------------------ verify

    def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
        """The picture's side through the backbone, the encoder's tokens, and the decoder's queries.

        YOLOS appends its detection tokens to the patches of one ViT; DETR and RT-DETR attend over
        the backbone's stride-32 map (16 with DETR's dilated last stage), then queries attend to it.
        """
        batch, _, height, width = case.inputs["pixel_values"].shape
        queries = int(dims.setting("num_queries") or dims.setting("num_detection_tokens") or 100)
        if dims.patch:
            tokens = patch_tokens(height, width, dims.patch) + queries
            return {**input_terms(case.inputs), **transformer_terms(dims, batch, tokens)}
        stride = 16 if dims.setting("dilation") else 32
        tokens = -(-height // stride) * -(-width // stride)
        decoder = batch * queries * (dims.heads * (queries + tokens) * ATTENTION_COPIES + dims.width * ACTIVATION_COPIES)
        backbone = pixel_terms(dataclasses.replace(dims, patch=0), (batch, 3, height, width))
        return {**input_terms(case.inputs), **backbone, **transformer_terms(dims, batch, tokens),
                "queries": decoder * dims.itemsize}

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        """Half the pictures, padded again by the image processor (the batch pads to its largest picture)."""
        from zoo.tasks._detection_verify import processor_inputs

        if len(case.raw) <= 1:
            return None
        images = case.raw[:(len(case.raw) + 1) // 2]
        return Case(case.kind, case.seed, processor_inputs(processor, images, [i.name for i in spec.inputs]),
                    raw=images)

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        from zoo.tasks._detection_verify import DetectionAgreement

        return DetectionAgreement(decoding_for(spec), tol)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        from zoo.tasks._detection_preprocess import ImageSteps

        problems = []
        for read in (lambda: ImageSteps.from_folder(folder),
                     lambda: Decoding.from_dict(manifest.preprocess.get("detection"))):
            try:
                read()
            except ArtifactError as exc:
                problems.append(str(exc))
        return problems

    # ------------------------------------------------------------ optimize

    def optimization_gate(self, tol: Tolerances) -> Any:
        """Refused: zoo optimize judges a graph by its first output alone, and a detector's boxes are its second."""
        raise UnsupportedTaskError("zoo optimize does not judge object detectors yet: its accuracy gate compares "
                                   "one output, and a detector's boxes would go unchecked; use the exported "
                                   "artifact as it is")

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks._detection_preprocess import DetectionPreprocessor

        Decoding.from_dict(manifest.preprocess.get("detection"), f"{folder}/manifest.json")  # refuse at load time
        return DetectionPreprocessor.from_artifact(folder, manifest)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        threshold = options.get("threshold")
        if threshold is None:
            return {}
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise InputError(f"threshold={threshold!r}; give a score between 0 and 1 (detections scoring above it "
                             "are kept)")
        return {"threshold": float(threshold)}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks._detection_postprocess import decode

        decoding = Decoding.from_dict(manifest.preprocess.get("detection"))
        threshold = options.get("threshold", decoding.threshold)
        found = decode(outputs["logits"], outputs["pred_boxes"], batch.sizes, decoding, threshold)
        return [Detections(tuple(Detection(label_name(labels, int(c)), float(s), tuple(float(v) for v in b), int(c))
                                 for s, c, b in zip(f.scores, f.labels, f.boxes)), size)
                for f, size in zip(found, batch.sizes)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "label", "score", "box (x0, y0, x1, y1)"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for item, result in zip(inputs, results):
            if not len(result):
                table.add_row(escape(item), "-", "-", "nothing above the threshold")
            for rank, found in enumerate(result):
                box = ", ".join(f"{v:.1f}" for v in found.box)
                table.add_row(escape(item) if rank == 0 else "", escape(found.label), f"{found.score:.4f}", box)
        return table

    def save_pictures(self, inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
        from zoo.tasks._detection_draw import save_pictures

        return save_pictures(inputs, results, Path(folder))

    # ------------------------------------------------------------ data

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._shapes import shapes

        return {"shapes": shapes}

    def read_data(self, data: str) -> dict[str, Any] | None:
        from zoo.tasks._coco import find_coco, read_coco_splits

        files = find_coco(data)
        return None if files is None else read_coco_splits(files)

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """``--image-size N``: the shorter side becomes N (the longer keeps its ratio), or N x N for fixed sizes."""
        family(spec)  # refuse an unsupported detector before any data is read
        if not config.image_size:
            return spec
        size = config.image_size
        pp = dataclasses.replace(spec.preprocess, input_size=(3, size, size))
        inputs = spec.inputs
        if isinstance(spec.inputs[0].shape[2], int):  # a fixed-size family (RT-DETR) traces at the new size
            inputs = detection_inputs(len(spec.inputs) > 1, (size, size))
        return dataclasses.replace(spec, preprocess=pp, inputs=inputs)

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        image = self.image_column(table, input_column)
        objects = choose_column(list(table.column_names), label_column, OBJECT_COLUMNS,
                                "objects (boxes and categories)", "--label-column")
        return {"input": image, "label": objects}

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        """The model's own categories when the data's are all among them (head kept), else the data's."""
        from zoo.data.labels import LabelPlan
        from zoo.tasks._detection_data import category_labels, category_names

        labels = category_labels(table, column)
        if not labels:
            raise DataError(f"column '{column}' names no categories; a detection data set needs at least one")
        if spec.labels and not new_head and set(labels) <= set(spec.labels):
            return LabelPlan(tuple(spec.labels), new_head=False, source="model", distinct=len(labels))
        source = "classlabel" if category_names(table, column) is not None else "sorted"
        return LabelPlan(labels, new_head=True, source=source, distinct=len(labels))

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks._detection_data import DetectionExamples, read_targets

        targets = read_targets(table, columns, labels.names, what)
        if what == "train" and not any(t.labels for t in targets):
            raise DataError(f"the {what} data holds {len(targets)} pictures but not one box; a detector learns "
                            "from boxed objects (pictures without boxes are fine beside them)")
        return DetectionExamples(table, columns["input"], targets, processor, [i.name for i in spec.inputs])

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        return {i.name: batch[i.name] for i in spec.inputs}

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._detection_torch import training_loss

        return training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._detection_torch import eval_batch

        return eval_batch(runner, batch, inputs, rows, decoding_for(runner.spec))

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._coco import coco_map

        return coco_map(records, labels)


def _processor_steps(folder: Path) -> Any:
    """The folder's image-processor settings; a missing or unsupported config names the remedy."""
    from zoo.tasks._detection_preprocess import ImageSteps, steps_from_folder

    return steps_from_folder(ImageSteps, folder, "a detector")


def nominal_preprocess(steps: Any) -> Preprocess:
    """The processor in the spec's vocabulary: a nominal size (the shorter side, or the fixed size), mean, std."""
    if "shortest_edge" in steps.size:
        height = width = steps.size["shortest_edge"]
    else:
        height, width = steps.fixed_size or tuple(steps.size.values())
    mean, std = (steps.mean, steps.std) if steps.do_normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Preprocess(input_size=(3, int(height), int(width)), mean=mean, std=std,
                      interpolation=_RESAMPLE_NAMES.get(steps.resample, "bilinear"))


def _size_override(steps: Any, spec: ModelSpec) -> dict[str, Any]:
    """Processor keyword arguments that resize to the spec's nominal size (set by --image-size), if it differs."""
    wanted = (spec.preprocess.input_size or (3, 0, 0))[1:]
    if "shortest_edge" in steps.size:
        short, long = steps.size["shortest_edge"], steps.size["longest_edge"]
        if not wanted[0] or wanted[0] == short:
            return {}
        return {"size": {"shortest_edge": wanted[0], "longest_edge": max(wanted[0], round(wanted[0] * long / short))}}
    if "height" in steps.size and wanted[0] and tuple(wanted) != (steps.size["height"], steps.size["width"]):
        return {"size": {"height": wanted[0], "width": wanted[1]}}
    return {}


TASK = ObjectDetection()
