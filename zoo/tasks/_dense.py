"""What the per-pixel image tasks share (image-segmentation, depth-estimation): their torch-free halves.

Preprocessing reproduces the model's transformers image processor (SegFormer's, which
UperNet checkpoints also use, and DPT's, which Depth Anything uses) from the
``preprocessor_config.json`` the artifact carries: resize to the processor's size
(DPT's variant can keep the aspect ratio and round each side to a multiple of the
patch), rescale, normalise. The arithmetic is the detection preprocessor's
(``_detection_preprocess.ImageSteps``), which follows transformers' PIL backend.

Postprocessing resizes a model's low-resolution map back to each picture's own size
the way ``torch.nn.functional.interpolate(..., align_corners=False)`` does (bilinear
for segmentation logits, bicubic for depth), as one (out, in) weight matrix per
axis, so the runtime needs numpy only.

``DenseTask`` holds what both tasks do alike: describe a folder from its processor, the
verification grid (generated non-square scenes at sizes the export never traced), the
artifact's files, the preprocessing parity check and the runtime preprocessor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from zoo.checks import Check
from zoo.errors import ArtifactError, DataError, InputError
from zoo.spec import InputSpec, ModelSpec, Preprocess
from zoo.tasks._detection_preprocess import (CONFIG_FILE, ImageSteps, _normalisation, _processor_kind, _resampling,
                                            steps_from_folder)
from zoo.tasks._image import ImageTask
from zoo.tasks.base import Case

# transformers' image processors whose steps this module reproduces
PROCESSORS = ("SegformerImageProcessor", "DPTImageProcessor")
_CUBIC_A = -0.75  # torch's bicubic kernel (Keys, a = -0.75)
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIXEL_TOLERANCE = 1e-4  # preprocessing: the processor's own arrays, to float rounding
_ROW_CHUNK = 128  # output rows per step of the segmentation argmax: bounds memory at classes x 128 x width


@dataclass(frozen=True)
class DenseSteps(ImageSteps):
    """A SegFormer or DPT processor's settings, checked."""

    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) every picture resizes to, or None when it follows the picture (DPT keeping aspect)."""
        if not self.do_resize or self.keep_aspect_ratio or self.ensure_multiple_of != 1:
            return None
        return self.size["height"], self.size["width"]

    @classmethod
    def from_config(cls, config: Any, where: str = CONFIG_FILE) -> DenseSteps:
        _, problems = _processor_kind(config, where, PROCESSORS)
        size = config.get("size")
        if not (isinstance(size, dict) and all(isinstance(size.get(k), int) and not isinstance(size.get(k), bool)
                                               and size[k] > 0 for k in ("height", "width"))):
            problems.append(f"size {size!r} (give height and width, positive integers)")
            size = {"height": 1, "width": 1}
        mean, std = _normalisation(config, problems)
        resample, factor = _resampling(config, problems)
        multiple = config.get("ensure_multiple_of", 1)
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            problems.append(f"ensure_multiple_of {multiple!r} (a positive integer)")
        if config.get("do_pad"):
            # DPT's optional centred padding to a size divisor: no released checkpoint turns it on
            problems.append("do_pad true (zoo reproduces DPT's processor without its padding)")
        if problems:
            raise ArtifactError(f"{where}: " + "; ".join(problems) + "; re-export the artifact")
        return cls(rule="dense", size={"height": size["height"], "width": size["width"]}, resample=int(resample),
                   do_resize=bool(config.get("do_resize", True)), do_rescale=bool(config.get("do_rescale", True)),
                   rescale_factor=float(factor), do_normalize=bool(config.get("do_normalize", True)), mean=mean,
                   std=std, do_pad=False, pad_size=None, keep_aspect_ratio=bool(config.get("keep_aspect_ratio")),
                   ensure_multiple_of=int(multiple))

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """DPT's rule (SegFormer's is its plain case): scale each side to the target, or both by the factor
        closer to 1 when keeping the aspect ratio, then round each side to the nearest multiple."""
        if not self.do_resize:
            return height, width
        scale_h, scale_w = self.size["height"] / height, self.size["width"] / width
        if self.keep_aspect_ratio:
            scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        size = _multiple(scale_h * height, self.ensure_multiple_of), _multiple(scale_w * width, self.ensure_multiple_of)
        if min(size) < 1:
            raise InputError(f"a {width}x{height} picture resizes to {size[1]}x{size[0]} with this model's processor "
                             "(it keeps the aspect ratio); crop it to a less extreme shape")
        return size


def _multiple(value: float, multiple: int) -> int:
    rounded = round(value / multiple) * multiple
    return rounded if rounded >= 0 else math.ceil(value / multiple) * multiple


def read_steps(folder: Path, what: str) -> DenseSteps:
    """The folder's image-processor settings; a missing or unsupported config names the remedy."""
    return steps_from_folder(DenseSteps, folder, f"a {what} model")


def dense_inputs(steps: DenseSteps) -> tuple[InputSpec, ...]:
    """pixel_values at the processor's fixed size, or with dynamic height and width when sizes follow pictures."""
    height, width = steps.fixed_size or ("height", "width")
    return (InputSpec("pixel_values", "float32", ("batch", 3, height, width)),)


def nominal_preprocess(steps: DenseSteps) -> Preprocess:
    """The processor in the spec's vocabulary: its target size, mean and std."""
    mean, std = (steps.mean, steps.std) if steps.do_normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Preprocess(input_size=(3, steps.size["height"], steps.size["width"]), mean=mean, std=std,
                      interpolation=_RESAMPLE_NAMES.get(steps.resample, "bilinear"))


def size_override(steps: DenseSteps, spec: Any) -> dict[str, Any]:
    """Processor keyword arguments for the spec's nominal size (set by ``--image-size``), where it differs."""
    wanted = (spec.preprocess.input_size or (3, 0, 0))[1:]
    if wanted[0] and tuple(wanted) != (steps.size["height"], steps.size["width"]):
        return {"size": {"height": wanted[0], "width": wanted[1]}}
    return {}


# ---------------------------------------------------------------- resizing maps back to the picture


def resize_weights(source: int, target: int, mode: str) -> np.ndarray:
    """(target, source) float32 weights: row i mixes the source samples torch's interpolate reads for output i.

    torch maps output index i to source coordinate (i + 0.5) * source / target - 0.5
    (``align_corners=False``); bilinear clamps it at 0 and mixes the two samples around
    it, bicubic mixes four with Keys' kernel and clamps the indices at the borders.
    """
    weights = np.zeros((target, source), dtype=np.float64)
    rows = np.arange(target)
    x = (rows + 0.5) * (source / target) - 0.5
    if mode == "bilinear":
        x = np.maximum(x, 0.0)
        low = np.minimum(np.floor(x).astype(np.int64), source - 1)
        frac = x - low
        np.add.at(weights, (rows, low), 1.0 - frac)
        np.add.at(weights, (rows, np.minimum(low + 1, source - 1)), frac)
    elif mode == "bicubic":
        low = np.floor(x).astype(np.int64)
        t = x - low
        for offset, weight in zip((-1, 0, 1, 2), _cubic(t)):
            np.add.at(weights, (rows, np.clip(low + offset, 0, source - 1)), weight)
    else:
        raise ValueError(f"resize mode {mode!r}")
    return weights.astype(np.float32)


def _cubic(t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keys' cubic convolution weights of the samples at offsets -1, 0, 1, 2 from floor(x), t = x - floor(x)."""
    a = _CUBIC_A

    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def resize_map(values: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(..., h, w) -> (..., height, width) as torch's interpolate with ``align_corners=False``."""
    rows = resize_weights(values.shape[-2], size[0], mode)
    cols = resize_weights(values.shape[-1], size[1], mode)
    return (rows @ values.astype(np.float32) @ cols.T).astype(np.float32)


def depth_map(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) depth map at the picture's (height, width), bicubic as ``post_process_depth_estimation``."""
    return resize_map(depth, size, "bicubic")


def class_map(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(classes, h, w) logits -> the (height, width) argmax of their bilinear upsampling, a band of rows at a time."""
    rows = resize_weights(logits.shape[-2], size[0], "bilinear")
    cols = resize_weights(logits.shape[-1], size[1], "bilinear").T
    narrow = logits.astype(np.float32) @ cols  # (classes, h, width): columns first, the cheaper order
    out = np.empty(size, dtype=np.int64)
    for start in range(0, size[0], _ROW_CHUNK):
        band = np.einsum("yh,chw->cyw", rows[start:start + _ROW_CHUNK], narrow)
        out[start:start + _ROW_CHUNK] = band.argmax(axis=0)
    return out


# ---------------------------------------------------------------- the verification grid


def grid_pictures(seed: int, steps: DenseSteps) -> list[tuple[str, list[Image.Image]]]:
    """(kind, pictures) per case: one non-square picture, then three in a batch.

    A processor with a fixed size takes pictures of three shapes in one batch; one that
    keeps the aspect ratio gets three of one shape (a batch holds one resized size).
    """
    from zoo.tasks._detection_verify import scenes

    one = ((90, 120),) if seed % 2 == 0 else ((120, 90),)
    three = ((150, 100), (100, 100), (80, 140)) if steps.fixed_size else ((100, 150),) * 3
    return [("one picture", scenes(seed, one)), ("three pictures", scenes(seed + 17, three))]


def example_pictures(steps: DenseSteps) -> list[Image.Image]:
    """The export's traced batch: two pictures of a size the grid does not use."""
    from zoo.tasks._detection_verify import scenes

    return scenes(1234, ((70, 110), (70, 110)) if not steps.fixed_size else ((70, 110), (120, 90)))


def processor_pixels(processor: Any, images: list[Image.Image]) -> dict[str, np.ndarray]:
    encoded = processor(images=images, return_tensors="np")
    return {"pixel_values": np.ascontiguousarray(encoded["pixel_values"]).astype(np.float32)}


def preprocessing_check(stage: Path, cases: list[Case]) -> Check:
    """The runtime's Pillow/numpy preprocessing, from the artifact's files, against the processor's arrays."""
    from zoo.tasks._detection_preprocess import DetectionPreprocessor

    try:
        runtime = DetectionPreprocessor(DenseSteps.from_folder(stage), ["pixel_values"])
    except (ArtifactError, OSError, ValueError) as exc:  # an unreadable config fails this check, in its line
        return Check("runtime preprocessing", False, "unreadable", "", str(exc)[:300])
    worst, wrong = 0.0, []
    for case in cases:
        got, expected = runtime.batch(case.raw).arrays["pixel_values"], case.inputs["pixel_values"]
        if got.shape != expected.shape:
            wrong.append(f"{case.label} shape {list(got.shape)} != {list(expected.shape)}")
            continue
        diff = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
        worst = max(worst, diff)
        if diff > PIXEL_TOLERANCE:
            wrong.append(f"{case.label} max diff {diff:.3g}")
    return Check("runtime preprocessing", not wrong and bool(cases), f"max diff {worst:.2g}",
                 f"<= {PIXEL_TOLERANCE:g} of the image processor's arrays", "; ".join(wrong[:3]))



# ---------------------------------------------------------------- the task base


class DenseTask(ImageTask):
    """What segmentation and depth share: the processor's inputs, its grid, its files, its runtime steps."""

    what: ClassVar[str] = "dense prediction"  # the model kind, in messages

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        steps = read_steps(folder, self.what)
        return dense_inputs(steps), nominal_preprocess(steps), self.labels_from_config(config)

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        """The model's transformers image processor (PIL backend), at the size the spec trains or exports."""
        from transformers import AutoImageProcessor

        steps = read_steps(Path(str(folder)), self.what)
        return AutoImageProcessor.from_pretrained(str(folder), backend="pil", **size_override(steps, spec))

    # ------------------------------------------------------------ export

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        return {"height": 4096, "width": 4096}

    def map_axes(self, spec: ModelSpec) -> list[str | None]:
        """The output map's height and width axes: dynamic where the input's are."""
        dynamic = isinstance(spec.inputs[0].shape[2], str)
        return ["map_height", "map_width"] if dynamic else [None, None]

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        return processor_pixels(processor, example_pictures(steps_of(processor)))

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        return [Case(kind, seed, processor_pixels(processor, images), raw=images)
                for seed in seeds for kind, images in grid_pictures(seed, steps_of(processor))]

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        processor.save_pretrained(str(stage))
        record: dict[str, Any] = dataclasses.asdict(spec.preprocess)
        record.update(files=[CONFIG_FILE])
        return record

    # ------------------------------------------------------------ verify

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        """Half the pictures, made again by the processor."""
        if len(case.raw) <= 1:
            return None
        images = case.raw[:(len(case.raw) + 1) // 2]
        return Case(case.kind, case.seed, processor_pixels(processor, images), raw=images)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        try:
            DenseSteps.from_folder(folder)
        except ArtifactError as exc:
            return [str(exc)]
        return []

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks._detection_preprocess import DetectionPreprocessor

        return DetectionPreprocessor(DenseSteps.from_folder(folder), [i.name for i in manifest.inputs])

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """``--image-size N``: pictures resize to N x N (a processor keeping the aspect ratio scales towards it)."""
        if not config.image_size:
            return spec
        size = config.image_size
        pp = dataclasses.replace(spec.preprocess, input_size=(3, size, size))
        inputs = spec.inputs
        if isinstance(spec.inputs[0].shape[2], int):
            inputs = (dataclasses.replace(spec.inputs[0], shape=("batch", 3, size, size)),)
        return dataclasses.replace(spec, preprocess=pp, inputs=inputs)


class PictureExamples:
    """Indexable training rows of pictures: a subclass's ``batch`` encodes them with the model's processor."""

    def __init__(self, table: Any, columns: dict[str, str], processor: Any):
        self.table, self.columns, self.processor = table, columns, processor

    def __len__(self) -> int:
        return len(self.table)

    def target_count(self, indices: list[int]) -> int:
        # the model's loss is a per-batch mean over pixels; the loop weighs each picture equally
        return len(indices)


def stacked_pixels(pixel_values: Any) -> np.ndarray:
    """The processor's pictures as one float32 batch; refused when they resized to different sizes."""
    pixels = [np.asarray(p) for p in pixel_values]
    if len({p.shape for p in pixels}) > 1:
        raise DataError(f"pictures resize to different sizes {sorted({p.shape[1:] for p in pixels})} with this "
                        "processor (it keeps the aspect ratio); give pictures of one size, or --batch-size 1")
    return np.stack(pixels).astype(np.float32)


def steps_of(processor: Any) -> DenseSteps:
    """The checked steps of a transformers processor, read from the JSON it would save."""
    import json

    config = json.loads(processor.to_json_string())
    config["image_processor_type"] = type(processor).__name__
    return DenseSteps.from_config(config, "the image processor")
