"""Artifacts for the runtime tests (no tests here; the runtime test modules import these fixtures).

``make_artifact`` uses the real exporter (``exporters.onnx.export_onnx``) when it is
present, else a minimal stand-in that follows ``zoo/artifact.py``'s documented layout.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests import tiny

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film",
    "Barack Obama was born in Honolulu and later moved to Chicago",
    "Apple released a new laptop with a faster chip and a brighter screen in New York",
    "Terrible",
]


def make_artifact(name: str | Path, out: Path, *, random_init: bool = False) -> Path:
    try:
        from exporters.onnx import export_onnx
    except ImportError:
        return _standin_export(str(name), Path(out), random_init=random_init)
    return Path(export_onnx(str(name), out=out, random_init=random_init).path)


def _standin_export(name: str, out: Path, *, random_init: bool) -> Path:
    import torch

    from zoo import sources
    from zoo.artifact import write_manifest
    from zoo.resolve import resolve

    spec = resolve(name)
    source = sources.for_spec(spec)
    model, preprocess = source.create_model(spec, pretrained=not random_init)
    spec = dataclasses.replace(spec, preprocess=preprocess)
    module = source.inference_module(model, spec).eval()
    names = [i.name for i in spec.inputs]
    if spec.is_text:
        args = tuple(torch.ones(2, 8, dtype=torch.int64) for _ in names)
    else:
        args = (torch.rand(2, *preprocess.input_size),)
    output = source.output_name(spec)
    axes = {i.name: i.dynamic_axes() for i in spec.inputs}
    axes[output] = {0: "batch"} if spec.task != "token-classification" else {0: "batch", 1: "sequence"}
    out.mkdir(parents=True)
    torch.onnx.export(module, args, str(out / "model.onnx"), input_names=names, output_names=[output],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    files = source.save_preprocessor(spec, out)
    with torch.inference_mode():
        shape = list(module(*args).shape)
    out_shape = ["batch", *shape[1:]] if spec.task != "token-classification" else ["batch", "sequence", shape[2]]
    pp = {**dataclasses.asdict(preprocess), "files": files}
    write_manifest(out, {
        "name": spec.name, "spec": spec.to_dict(), "task": spec.task, "labels": list(spec.labels or []) or None,
        "source": {"source": spec.source, "id": spec.source_id, "revision": spec.revision},
        "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in spec.inputs],
        "outputs": [{"name": output, "dtype": "float32", "shape": out_shape}],
        "opset": 17, "exporter": "torchscript", "preprocess": pp,
    })
    return out


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory: Any, minilm_dir: Path) -> Path:
    return make_artifact(minilm_dir, tmp_path_factory.mktemp("rt") / "minilm")


@pytest.fixture(scope="session")
def text_cls_artifact(tmp_path_factory: Any, tiny_text_classifier: Path) -> Path:
    return make_artifact(tiny_text_classifier, tmp_path_factory.mktemp("rt") / "text-cls")


@pytest.fixture(scope="session")
def ner_folder(tmp_path_factory: Any, registry: Any) -> Path:
    return tiny.tiny_hf_folder(registry.get("bert-ner"), tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="session")
def ner_artifact(tmp_path_factory: Any, ner_folder: Path) -> Path:
    return make_artifact(ner_folder, tmp_path_factory.mktemp("rt") / "ner")


@pytest.fixture(scope="session")
def timm_artifact(tmp_path_factory: Any, tiny_timm_folder: Path) -> Path:
    return make_artifact(tiny_timm_folder, tmp_path_factory.mktemp("rt") / "timm")


@pytest.fixture(scope="session")
def image_file(tmp_path_factory: Any) -> Path:
    """A real, non-square JPEG photo-like image (gradients + shapes), so resize and crop matter."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:171, 0:250]
    pixels = np.stack([x % 256, (y * 3) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((60, 30, 170, 140), fill=(200, 40, 90))
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    image.save(path, quality=90)
    return path


def copy_artifact(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest
