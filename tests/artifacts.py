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


def make_artifact(name: str | Path, out: Path, *, random_init: bool = False, full_grid: bool = False) -> Path:
    """A verified artifact written by the real exporter (issue 3), as a user's 'zoo export' makes it.

    The grid is one seed's (every kind of case, a third of the cases) unless ``full_grid``: the
    three-seed grid and its three golden sets are what the artifacts of the export, verify and
    golden-data tests (MiniLM, the tiny text classifier, the tiny timm model) are read for.
    """
    import exporters.source
    from exporters.onnx import export_onnx

    with pytest.MonkeyPatch.context() as patch:
        if not full_grid:
            patch.setattr(exporters.source, "SEEDS", (0,))
        return Path(export_onnx(str(name), out=out, random_init=random_init).path)


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory: Any, minilm_dir: Path) -> Path:
    return make_artifact(minilm_dir, tmp_path_factory.mktemp("rt") / "minilm", full_grid=True)


@pytest.fixture(scope="session")
def text_cls_artifact(tmp_path_factory: Any, tiny_text_classifier: Path) -> Path:
    return make_artifact(tiny_text_classifier, tmp_path_factory.mktemp("rt") / "text-cls", full_grid=True)


@pytest.fixture(scope="session")
def ner_folder(tmp_path_factory: Any, registry: Any) -> Path:
    return tiny.tiny_hf_folder(registry.get("bert-ner"), tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="session")
def ner_artifact(tmp_path_factory: Any, ner_folder: Path) -> Path:
    return make_artifact(ner_folder, tmp_path_factory.mktemp("rt") / "ner")


@pytest.fixture(scope="session")
def timm_artifact(tmp_path_factory: Any, tiny_timm_folder: Path) -> Path:
    return make_artifact(tiny_timm_folder, tmp_path_factory.mktemp("rt") / "timm", full_grid=True)


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


@pytest.fixture(scope="session")
def whisper(tmp_path_factory: Any) -> tuple[Path, Any]:
    """(tiny Whisper folder with its built tokenizer, its export result): one grid seed, the plain graphs.
    Shared by test_asr.py and test_whisper_long.py, which run on one worker (xdist group "asr")."""
    import exporters.source
    from exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("asr-whisper")
    folder = tiny.tiny_whisper_folder(root / "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporters.source, "SEEDS", (0,))
        result = export_onnx(str(folder), out=root / "artifact", fuse=False)
    return folder, result


def short_artifact(folder: Path, out: Path, max_length: int) -> Path:
    """An artifact whose longest sequence is MAX_LENGTH, verified on one seed's grid (every kind of case is still
    checked): a large-vocabulary head at full length takes minutes to verify."""
    import dataclasses

    import exporters.source
    from exporters.onnx import export_onnx
    from zoo.resolver import resolve

    spec = resolve(str(folder))
    spec = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, max_length=max_length))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporters.source, "SEEDS", (0,))
        return Path(export_onnx(spec, out=out).path)


def copy_artifact(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def scene_files(folder: Path, seed: int, sizes: tuple[tuple[int, int], ...], stem: str) -> list[Path]:
    """Generated scenes saved as PNG files in FOLDER, one a (height, width) of SIZES: STEM0.png, STEM1.png, ..."""
    from zoo.tasks._detection_verify import scenes

    paths = []
    for i, image in enumerate(scenes(seed, sizes)):
        paths.append(folder / f"{stem}{i}.png")
        image.save(paths[-1])
    return paths


def grid_and_torch_outputs(folder: Path, auto_class: str,
                           outputs: tuple[str, ...]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The export grid (seeds 0, 1) of the tiny model in FOLDER and torch's OUTPUTS on it, loaded with transformers'
    AUTO_CLASS: the references of the task's parity checks."""
    import torch
    import transformers

    from zoo.resolver import resolve
    from zoo.sources import load_processor
    from zoo.tasks import get_task

    spec = resolve(str(folder))
    cases = get_task(spec.task).grid(spec, load_processor(spec), (0, 1))
    model = getattr(transformers, auto_class).from_pretrained(str(folder)).eval()
    references = []
    with torch.no_grad():
        for case in cases:
            out = model(**{k: torch.from_numpy(v) for k, v in case.inputs.items()})
            references.append({name: getattr(out, name).numpy() for name in outputs})
    return cases, references


def metric_lines(run: Path, key: str) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl that carry ``key`` (its evaluations of that metric), in order."""
    import json

    return [line for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in line]
