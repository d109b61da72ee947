"""image-feature-extraction: timm backbones without their head and transformers vision backbones as embedders.

    .venv/bin/pytest tests/test_image_embeddings.py
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.tasks import get_task, task_for_hf_config

ROOT = Path(__file__).resolve().parents[1]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_unit_rows(a.astype(np.float64)) * _unit_rows(b.astype(np.float64))).sum(1)


@pytest.fixture(scope="module")
def timm_classifier(tmp_path_factory: Any) -> tuple[Any, Path]:
    """timm's test_convnext with a 3-class head, saved as a timm folder (the head is what the embedder drops)."""
    import timm
    import torch

    from zoo.resolver import resolve
    from zoo.sources import timm as timm_source

    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False, num_classes=3).eval()
    folder = tmp_path_factory.mktemp("convnext")
    spec = dataclasses.replace(resolve("timm:test_convnext"), labels=("a", "b", "c"))
    timm_source.save_model(model, spec, folder)
    return model, folder


def _embedder_spec(folder: Path, normalize: bool) -> Any:
    from zoo.resolver import resolve

    spec = resolve(str(folder))
    pp = dataclasses.replace(spec.preprocess, normalize=normalize)
    return dataclasses.replace(spec, task="image-feature-extraction", labels=None, preprocess=pp,
                               name=f"convnext-embed{'-unit' if normalize else ''}")


@pytest.fixture(scope="module")
def embed_artifact(timm_classifier: tuple[Any, Path], tmp_path_factory: Any) -> Path:
    from exporters.onnx import export_onnx

    spec = _embedder_spec(timm_classifier[1], normalize=False)
    return export_onnx(spec, out=tmp_path_factory.mktemp("emb") / "convnext-embed").path


@pytest.fixture(scope="module")
def unit_artifact(timm_classifier: tuple[Any, Path], tmp_path_factory: Any) -> Path:
    from exporters.onnx import export_onnx

    spec = _embedder_spec(timm_classifier[1], normalize=True)
    return export_onnx(spec, out=tmp_path_factory.mktemp("emb") / "convnext-unit").path


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8) for i in range(count)]


def test_timm_embeddings_match_forward_features_and_pooling(timm_classifier: tuple[Any, Path],
                                                            embed_artifact: Path) -> None:
    """The artifact's embedding = timm's forward_head(forward_features(x), pre_logits=True) of the classifier."""
    import torch

    import zoo

    classifier, _ = timm_classifier
    model = zoo.load(embed_artifact)
    images = _images(3)
    pixels = model.preprocess(images).arrays["pixel_values"]
    got = np.stack([np.asarray(e) for e in model.predict(images)])
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        expected = classifier.forward_head(classifier.forward_features(x), pre_logits=True).numpy()
    assert got.shape == expected.shape == (3, classifier.num_features)
    assert _row_cosines(got, expected).min() >= 0.9999
    assert np.abs(got - expected).max() < 1e-4


def test_normalised_embeddings_are_unit_length_and_recorded(unit_artifact: Path, embed_artifact: Path) -> None:
    import zoo

    unit, raw = zoo.load(unit_artifact), zoo.load(embed_artifact)
    assert unit.manifest.preprocess["normalize"] is True and raw.manifest.preprocess["normalize"] is False
    images = _images(2)
    vectors = np.stack([np.asarray(e) for e in unit.predict(images)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    plain = np.stack([np.asarray(e) for e in raw.predict(images)])
    assert np.allclose(vectors, _unit_rows(plain), atol=1e-5)


def test_verification_reports_cosine_and_max_abs(embed_artifact: Path) -> None:
    manifest = json.loads((embed_artifact / "manifest.json").read_text())
    checks = {c["name"]: c for c in manifest["verification"]["checks"]}
    assert checks["cosine similarity"]["passed"] and checks["output embeddings"]["passed"]
    assert checks["output embeddings"]["value"].startswith("max abs")
    assert manifest["outputs"][0]["name"] == "embeddings" and manifest["outputs"][0]["shape"][0] == "batch"


def test_a_wrong_embedding_fails_the_cosine_check(timm_classifier: tuple[Any, Path], embed_artifact: Path) -> None:
    """The twin: a torch side whose embedding dims are shuffled is caught by cosine and max abs alike."""
    import torch

    from exporters.source import build_source
    from exporters.verify import compare_grid

    source = build_source(_embedder_spec(timm_classifier[1], normalize=False), seeds=(0,))

    class Shuffled(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return source.module(pixel_values).flip(-1)

    checks, _ = compare_grid(Shuffled(), source.spec, embed_artifact / "model.onnx", source.cases,
                             source.spec.verify)
    by_name = {c.name: c for c in checks}
    assert not by_name["cosine similarity"].passed and not by_name["output embeddings"].passed
    good, _ = compare_grid(source.module, source.spec, embed_artifact / "model.onnx", source.cases,
                           source.spec.verify)
    assert all(c.passed for c in good)


def test_predict_prints_shape_and_similarity_matrix(embed_artifact: Path, tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for i, image in enumerate(_images(2)):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(image).save(paths[-1])
    paths.append(paths[0])  # the same picture twice: similarity 1
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", str(embed_artifact), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=_wide_terminal())
    assert done.returncode == 0, done.stderr
    assert "cosine similarity" in done.stdout and "embeddings (" in done.stdout
    rows = [line for line in done.stdout.splitlines() if "0.jpg" in line]
    assert rows[0].count("+1.0000") == 2  # the diagonal and its twin
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", str(embed_artifact), str(paths[0]), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    record = json.loads(done.stdout)[0]
    assert record["shape"] == [len(record["vector"])]


def _wide_terminal() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "200"}


def test_hf_backbone_gives_its_pooled_output(registry: Any, tmp_path: Path) -> None:
    import torch
    import transformers

    import zoo
    from exporters.onnx import export_onnx
    from tests import tiny

    folder = tiny.tiny_hf_folder(registry.get("dinov2-small-hf"), tmp_path / "dinov2")
    artifact = export_onnx(str(folder), out=tmp_path / "art").path
    model = zoo.load(artifact)
    assert model.task == "image-feature-extraction"
    images = _images(2)
    got = np.stack([np.asarray(e) for e in model.predict(images)])
    backbone = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        pooled = backbone(torch.from_numpy(model.preprocess(images).arrays["pixel_values"])).pooler_output.numpy()
    assert _row_cosines(got, pooled).min() >= 0.9999


@pytest.mark.parametrize(("architecture", "model_type", "task"), [
    ("Dinov2Model", "dinov2", "image-feature-extraction"),
    ("ConvNextModel", "convnext", "image-feature-extraction"),
    ("ViTForImageClassification", "vit", "image-classification"),
    ("BertModel", "bert", "feature-extraction"),
])
def test_bare_vision_backbones_are_embedders(architecture: str, model_type: str, task: str) -> None:
    assert task_for_hf_config({"architectures": [architecture], "model_type": model_type}).name == task


def test_an_embedder_fine_tunes_as_a_classifier() -> None:
    from zoo.registry import load_registry

    spec = load_registry().get("convnext_tiny-embed")
    trained = get_task(spec.task).training_spec(spec, None)
    assert trained.task == "image-classification" and trained.preprocess.normalize is False
    assert get_task(spec.task).timm_kwargs(spec) == {"num_classes": 0}
