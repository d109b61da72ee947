"""Artifacts shared by the export, verify and runtime tests (fixtures, made available by conftest.py).

Every artifact comes from the real exporter, ``exporters.onnx.export_onnx``, on the
suite's tiny models and on the real MiniLM package.
"""

from __future__ import annotations

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
    """A verified artifact written by the real exporter (issue 3), as a user's 'zoo export' makes it."""
    from exporters.onnx import export_onnx

    return Path(export_onnx(str(name), out=out, random_init=random_init).path)


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


@pytest.fixture(scope="session")
def ast_folder(tmp_path_factory: Any, registry: Any) -> Path:
    """A tiny Audio Spectrogram Transformer classifier (32 mel bins x 128 frames) as a save_pretrained folder."""
    return tiny.tiny_hf_folder(registry.get("ast-audioset"), tmp_path_factory.mktemp("tiny-ast"))


@pytest.fixture(scope="session")
def ast_artifact(tmp_path_factory: Any, ast_folder: Path) -> Path:
    return make_artifact(ast_folder, tmp_path_factory.mktemp("rt") / "ast")


def copy_artifact(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest
