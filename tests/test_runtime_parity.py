"""End-to-end parity: ``predict`` on raw inputs equals the source ecosystem's own torch path.

HF tokenizer + model for text, transformers' pipeline for entities, timm's data
config + transforms on a real image file, sentence-transformers ``encode`` for
MiniLM. Each check has a twin that plants the fault it exists to catch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from tests.artifacts import SENTENCES, copy_artifact
from zoo.tasks.preprocess import ImagePreprocessor

pytestmark = pytest.mark.slow

LONG_TEXT = " ".join(["the committee discussed the climate adaptation report at length"] * 60)


# ---------------------------------------------------------------- text


def test_tokenizer_arrays_equal_transformers(text_cls_artifact: Path, tiny_text_classifier: Path) -> None:
    """tokenizers + the manifest's settings build the very arrays transformers builds (incl. truncation)."""
    import transformers

    model = zoo.load(text_cls_artifact)
    max_length = model.info["preprocess"]["max_length"]
    texts = [*SENTENCES, LONG_TEXT]
    ours = model.preprocess(texts).arrays
    tok = transformers.AutoTokenizer.from_pretrained(tiny_text_classifier)
    theirs = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    assert ours["input_ids"].shape[1] == max_length  # LONG_TEXT was cut at max_length
    for name in model.input_names:
        assert np.array_equal(ours[name], theirs[name]), name


def _hf_probs(folder: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, dict[int, str]]:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        logits = hf(**batch).logits
    return torch.softmax(logits, -1).numpy(), hf.config.id2label


def test_text_classifier_matches_transformers(text_cls_artifact: Path, tiny_text_classifier: Path) -> None:
    model = zoo.load(text_cls_artifact)
    texts = [*SENTENCES, LONG_TEXT]
    probs, id2label = _hf_probs(tiny_text_classifier, texts, model.info["preprocess"]["max_length"])
    results = model.predict(texts, top_k=2)
    assert len(results) == len(texts) == len(probs)
    for p, r in zip(probs, results):
        assert r.label == id2label[int(p.argmax())]
        assert r.scores == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-4)


def _hf_entities(folder: Path, text: str) -> list[dict[str, Any]]:
    import transformers

    pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy="first",
                                 device="cpu")
    return pipe(text)


NER_TEXTS = ["Barack Obama was born in Honolulu and later moved to Chicago",
             "Apple released a new laptop in New York on Tuesday, said Tim Cook."]


def test_entities_match_transformers_pipeline(ner_artifact: Path, ner_folder: Path) -> None:
    model = zoo.load(ner_artifact)
    seen = 0
    for text in NER_TEXTS:
        ours = model.predict(text).entities
        theirs = _hf_entities(ner_folder, text)
        assert [(e.label, e.start, e.end) for e in ours] == [(t["entity_group"], t["start"], t["end"])
                                                             for t in theirs]
        assert [e.score for e in ours] == pytest.approx([float(t["score"]) for t in theirs], abs=1e-4)
        seen += len(theirs)
    assert seen > 0, "the random NER model found no entities: the comparison would prove nothing"


def test_minilm_embeddings_match_sentence_transformers(minilm_artifact: Path, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*SENTENCES, LONG_TEXT]
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=4)
    got = np.stack(zoo.load(minilm_artifact).predict(texts, batch_size=3))
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert np.abs(got - expected).max() < 1e-4


# ---------------------------------------------------------------- images


def image_parity(artifact: Path, model_folder: Path, image: Path) -> None:
    """Assert that the runtime's prediction on an image file equals timm's own pipeline."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    net = timm.create_model(f"local-dir:{model_folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=net))
    pixels = transform(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        expected = torch.softmax(net(pixels), -1)[0].numpy()
    result = zoo.load(artifact).predict(image, top_k=3)
    labels = json.loads((model_folder / "config.json").read_text())["label_names"]
    assert result.label == labels[int(expected.argmax())]
    assert result.scores == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-4)


def test_image_classifier_matches_timm(timm_artifact: Path, tiny_timm_folder: Path, image_file: Path) -> None:
    image_parity(timm_artifact, tiny_timm_folder, image_file)


def test_changed_mean_std_breaks_image_parity(timm_artifact: Path, tiny_timm_folder: Path, image_file: Path,
                                              tmp_path: Path) -> None:
    """The twin: an artifact whose manifest records the wrong normalisation is caught."""
    art = copy_artifact(timm_artifact, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["preprocess"].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AssertionError):
        image_parity(art, tiny_timm_folder, image_file)


# Every crop mode, several interpolations, crop fractions and non-square targets, against timm itself.
TRANSFORM_GRID = [
    dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center", interpolation="bicubic"),
    dict(input_size=(3, 160, 160), crop_pct=0.95, crop_mode="center", interpolation="bilinear"),
    dict(input_size=(3, 96, 128), crop_pct=0.9, crop_mode="center", interpolation="bicubic"),
    dict(input_size=(3, 224, 224), crop_pct=1.0, crop_mode="squash", interpolation="bilinear"),
    dict(input_size=(3, 64, 80), crop_pct=0.875, crop_mode="squash", interpolation="nearest"),
    dict(input_size=(3, 224, 224), crop_pct=1.0, crop_mode="border", interpolation="bicubic"),
    dict(input_size=(3, 300, 200), crop_pct=0.95, crop_mode="border", interpolation="lanczos"),
    dict(input_size=(1, 32, 32), crop_pct=0.875, crop_mode="center", interpolation="bilinear"),
]


def _timm_pixels(cfg: dict[str, Any], image: Any) -> np.ndarray:
    from timm.data import create_transform

    return create_transform(**cfg).__call__(image).numpy()


@pytest.mark.parametrize("cfg", TRANSFORM_GRID, ids=lambda c: f"{c['crop_mode']}-{c['input_size'][1]}x"
                         f"{c['input_size'][2]}-{c['interpolation']}")
@pytest.mark.parametrize("size", [(171, 250), (400, 90)])
def test_image_transform_equals_timm(cfg: dict[str, Any], size: tuple[int, int], image_file: Path) -> None:
    from PIL import Image

    channels = cfg["input_size"][0]
    cfg = {**cfg, "mean": (0.485, 0.456, 0.406)[:channels], "std": (0.229, 0.224, 0.225)[:channels]}
    image = Image.open(image_file).convert("RGB" if channels == 3 else "L").resize(size[::-1])
    ours = ImagePreprocessor.from_record(cfg).transform(image)
    assert ours.shape == tuple(cfg["input_size"])
    assert np.abs(ours - _timm_pixels(cfg, image)).max() < 1e-5


def test_image_transform_check_sees_a_wrong_crop(image_file: Path) -> None:
    """The twin: the comparison above notices a transform that crops differently."""
    from PIL import Image

    cfg = dict(input_size=(3, 96, 128), crop_pct=0.9, crop_mode="center", interpolation="bicubic",
               mean=(0.5,) * 3, std=(0.5,) * 3)
    image = Image.open(image_file).convert("RGB")
    ours = ImagePreprocessor.from_record({**cfg, "crop_mode": "squash"}).transform(image)
    assert np.abs(ours - _timm_pixels(cfg, image)).max() > 0.1
