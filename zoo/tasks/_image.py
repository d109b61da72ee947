"""What every image task shares: pixel inputs, timm's data-config vocabulary, the image grid.

Export traces batch 2; the grid checks batch 1 and batch 3 of uniform pixels
normalised with the model's mean/std (the value range a real image has), one
set per seed. The artifact records preprocessing in timm's data-config
vocabulary (``preprocess.json`` and the manifest), which the torch-free
runtime applies with Pillow and numpy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.folders import read_json
from zoo.spec import IMAGE_PREPROCESS_KEYS, InputSpec, ModelSpec, Preprocess
from zoo.tasks._memory import ModelDims, input_terms, pixel_terms
from zoo.tasks.base import Case, Task, choose_column

EXPORT_BATCH = 2
IMAGE_BATCHES = (1, 3)  # batch 3 is neither the export batch nor 1, so a graph fixed at either fails
# Above this many pixels per image the grid stops at batch 2, to keep export + verification within
# 8 GiB: SAM's 1024-px global attention at batch 3 holds three 36x4096x4096 float tensors (7.2 GiB)
# at once in onnxruntime. Batch 1 still catches a graph fixed at the export batch.
LARGE_IMAGE_PIXELS = 768 * 768
LARGE_IMAGE_BATCHES = (1, 2)
IMAGE_CONFIG = "preprocess.json"
IMAGE_COLUMNS = ("image", "img", "picture", "pixel_values")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def image_inputs(input_size: tuple[int, int, int]) -> tuple[InputSpec, ...]:
    return (InputSpec("pixel_values", "float32", ("batch", *input_size)),)


def hf_image_preprocess(folder: Path, config: dict[str, Any]) -> Preprocess:
    """preprocessor_config.json (transformers image processors) in timm's vocabulary."""
    pp = read_json(folder / "preprocessor_config.json")
    size = pp.get("size", config.get("image_size", 224))
    if isinstance(size, dict):
        h = size.get("height") or size.get("shortest_edge") or 224
        w = size.get("width") or size.get("shortest_edge") or h
    else:
        h = w = int(size)
    channels = int(config.get("num_channels", 3))
    return Preprocess(
        input_size=(channels, int(h), int(w)),
        mean=tuple(pp.get("image_mean", (0.5,) * channels)),
        std=tuple(pp.get("image_std", (0.5,) * channels)),
        interpolation=_RESAMPLE.get(pp.get("resample", 2), "bilinear"),
        crop_pct=1.0, crop_mode="squash",
    )


def pixels(preprocess: Preprocess, batch: int, seed: int) -> np.ndarray:
    """Uniform pixels normalised with the model's mean/std: the range a real image has."""
    channels, height, width = preprocess.input_size or (3, 224, 224)
    rng = np.random.default_rng(seed)
    raw = rng.random((batch, channels, height, width), dtype=np.float32)
    mean = np.asarray(preprocess.mean or (0.5,) * channels, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess.std or (0.5,) * channels, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((raw - mean) / std).astype(np.float32)


def grid_batches(preprocess: Preprocess) -> tuple[int, ...]:
    """The batch sizes the verification grid runs for images of this size."""
    _, height, width = preprocess.input_size or (3, 224, 224)
    return LARGE_IMAGE_BATCHES if height * width > LARGE_IMAGE_PIXELS else IMAGE_BATCHES


def _input_name(spec: ModelSpec) -> str:
    """The pixel input's name; a spec built without inputs (a registry entry resolves them) is refused."""
    if not spec.inputs:
        from zoo.errors import ConfigError

        raise ConfigError(f"model spec '{spec.name}' lists no inputs; an image model takes one, e.g. inputs: "
                          "[{name: pixel_values, dtype: float32, shape: [batch, 3, 224, 224]}]")
    return spec.inputs[0].name


class ImageTask(Task):
    modality: ClassVar[str] = "image"
    expects: ClassVar[str] = "image paths, PIL images or uint8 arrays"

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        preprocess = hf_image_preprocess(folder, config)
        return image_inputs(preprocess.input_size or (3, 224, 224)), preprocess, self.labels_from_config(config)

    # ------------------------------------------------------------ export

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        return {_input_name(spec): pixels(spec.preprocess, EXPORT_BATCH, seed=1234)}

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        name = _input_name(spec)
        return [Case("image", seed, {name: pixels(spec.preprocess, batch, seed)})
                for seed in seeds for batch in grid_batches(spec.preprocess)]

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        files = []
        if folder is not None:
            # the source's own image-processor file, for tools that read it
            src = folder / "preprocessor_config.json"
            if src.is_file():
                (stage / src.name).write_bytes(src.read_bytes())
                files.append(src.name)
        record: dict[str, Any] = dataclasses.asdict(spec.preprocess)
        # timm keeps its data config inside the model code; the artifact carries it as a file
        image = {k: record[k] for k in IMAGE_PREPROCESS_KEYS}
        (stage / IMAGE_CONFIG).write_text(json.dumps(image, indent=2) + "\n")
        record["files"] = sorted([*files, IMAGE_CONFIG])
        return record

    # ------------------------------------------------------------ verify

    def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
        """The image side: patches attended to (vision transformers), or feature maps (CNNs)."""
        return {**input_terms(case.inputs), **pixel_terms(dims, case.inputs[spec.inputs[0].name].shape)}

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        if not manifest.preprocess.get("input_size"):
            return ["input_size (image preprocessing) not recorded"]
        return []

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks.preprocess import ImagePreprocessor

        return ImagePreprocessor(folder, manifest)

    def is_single(self, item: Any) -> bool:
        from PIL import Image

        return isinstance(item, (str, Path, Image.Image, np.ndarray))

    def input_suffixes(self) -> tuple[str, ...]:
        from PIL import Image

        # what this Pillow build opens (registered_extensions also lists save-only formats)
        return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(batch_size)]

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        pp = spec.preprocess
        size = pp.input_size or (3, 224, 224)
        if config.image_size:
            size = (size[0], config.image_size, config.image_size)
        if config.data.startswith("builtin:"):
            # the whole generated picture is the object: squash it to the input size, crop nothing
            pp = dataclasses.replace(pp, crop_pct=1.0, crop_mode="squash")
        pp = dataclasses.replace(pp, input_size=tuple(size))
        return dataclasses.replace(spec, preprocess=pp, inputs=image_inputs(tuple(size)))

    def image_column(self, table: Any, input_column: str | None) -> str:
        import datasets

        names = list(table.column_names)
        images = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
        return choose_column(names, input_column, images + [n for n in IMAGE_COLUMNS if n in names], "image",
                             "--text-column")

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        return {i.name: batch[i.name] for i in spec.inputs}
