"""zoo.load / ExportedModel: file checks, the raw graph's input checks, typed results, threads, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.artifacts import SENTENCES, copy_artifact
from zoo.errors import ArtifactError, ConfigError, InputError
from zoo.runtime import Classification, Embedding, ExportedModel, TokenClassification


@pytest.fixture(scope="module")
def text_model(text_cls_artifact: Path) -> ExportedModel:
    return zoo.load(text_cls_artifact)


# ---------------------------------------------------------------- loading and file checks


def test_load_exposes_manifest_and_signature(text_model: ExportedModel) -> None:
    assert text_model.task == "text-classification"
    assert text_model.input_names[:2] == ["input_ids", "attention_mask"]
    assert "input_ids int64[batch, sequence]" in text_model.signature()
    assert text_model.providers[-1] == "CPUExecutionProvider"
    info = text_model.info
    info["task"] = "changed"  # a copy: the model's own manifest is untouched
    assert text_model.info["task"] == "text-classification"


def test_untouched_artifact_passes_full_hash_check(text_cls_artifact: Path) -> None:
    from zoo.artifact import check_files, read_manifest

    assert check_files(text_cls_artifact, read_manifest(text_cls_artifact)) == []


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["model.onnx", "tokenizer.json"])
def test_tampered_file_is_refused(text_cls_artifact: Path, tmp_path: Path, victim: str) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    _flip_one_byte(art / victim)
    with pytest.raises(ArtifactError, match=f"{victim}: sha256 differs.*Re-export"):
        zoo.load(art)


def test_size_is_checked_even_without_hashes(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    with open(art / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match="tokenizer.json: size"):
        zoo.load(art, check_hashes=False)


def test_missing_file_and_missing_manifest(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    (art / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json: missing"):
        zoo.load(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        zoo.load(art)


def test_manifest_without_what_the_runtime_needs(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    original = json.loads((art / "manifest.json").read_text())
    manifest = {k: v for k, v in original.items() if k != "inputs"}
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="missing field 'inputs'"):
        zoo.load(art)
    (art / "manifest.json").write_text(json.dumps({**original, "task": "summarisation"}))
    with pytest.raises(ArtifactError, match="task 'summarisation' is not one zoo handles.*valid tasks"):
        zoo.load(art)


def test_manifest_that_disagrees_with_the_graph(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["inputs"][0]["name"] = "ids"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="but model.onnx has inputs"):
        zoo.load(art)


def test_unknown_provider_and_bad_threads(text_cls_artifact: Path) -> None:
    with pytest.raises(ConfigError, match="NopeExecutionProvider.*available: .*CPUExecutionProvider"):
        zoo.load(text_cls_artifact, providers=["NopeExecutionProvider"])
    with pytest.raises(ConfigError, match="threads=0"):
        zoo.load(text_cls_artifact, threads=0)
    assert zoo.load(text_cls_artifact, providers=["CPUExecutionProvider"], threads=1).providers == [
        "CPUExecutionProvider"]


# ---------------------------------------------------------------- the raw graph


def _arrays(n: int = 2, length: int = 7) -> dict[str, np.ndarray]:
    ids = np.full((n, length), 1037, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_raw_graph_call(text_model: ExportedModel) -> None:
    feed = {k: v for k, v in _arrays().items() if k in text_model.input_names}
    out = text_model(**feed)
    assert list(out) == [text_model.output_name]
    assert out["logits"].shape == (2, len(text_model.labels))


def test_raw_graph_wrong_dtype(text_model: ExportedModel) -> None:
    feed = {k: v for k, v in _arrays().items() if k in text_model.input_names}
    feed["input_ids"] = feed["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match=r"input_ids has dtype int32; the model expects input_ids int64"
                                         r"\[batch, sequence\].*astype\(np.int64\)"):
        text_model(**feed)


def test_raw_graph_wrong_rank_and_disagreeing_axes(text_model: ExportedModel) -> None:
    feed = {k: v for k, v in _arrays().items() if k in text_model.input_names}
    with pytest.raises(InputError, match=r"input_ids has shape \(7,\) \(1 dims\)"):
        text_model(**{**feed, "input_ids": feed["input_ids"][0]})
    with pytest.raises(InputError, match="attention_mask has sequence=5 but input_ids has sequence=7"):
        text_model(**{**feed, "attention_mask": feed["attention_mask"][:, :5]})


def test_raw_graph_missing_and_unexpected_names(text_model: ExportedModel) -> None:
    with pytest.raises(InputError, match=r"missing: attention_mask.*unexpected: pixel_values"):
        text_model(input_ids=_arrays()["input_ids"], pixel_values=np.zeros((1, 3, 8, 8), np.float32))


def test_image_graph_static_dims(timm_artifact: Path) -> None:
    model = zoo.load(timm_artifact)
    c, h, w = model.info["preprocess"]["input_size"]
    assert model(pixel_values=np.zeros((1, c, h, w), np.float32))["logits"].shape == (1, 3)
    with pytest.raises(InputError, match=f"size {h + 1} on axis 2, the model needs {h}"):
        model(pixel_values=np.zeros((1, c, h + 1, w), np.float32))


# ---------------------------------------------------------------- predict


def test_predict_classification(text_model: ExportedModel) -> None:
    one = text_model.predict("I loved this film", top_k=2)
    assert isinstance(one, Classification)
    assert set(one.labels) == {"negative", "positive"} and one.scores[0] >= one.scores[1]
    assert sum(one.scores) == pytest.approx(1.0, abs=1e-5)
    many = text_model.predict(SENTENCES, batch_size=2)
    assert len(many) == len(SENTENCES) and all(isinstance(r, Classification) for r in many)
    assert many[1].to_dict()["label"] == many[1].label


def test_predict_batching_does_not_change_results(text_model: ExportedModel) -> None:
    whole = text_model.predict(SENTENCES)
    single = [text_model.predict(s) for s in SENTENCES]
    assert len(whole) == len(SENTENCES)
    for a, b in zip(whole, single):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)


def test_predict_rejects_wrong_input_types(text_model: ExportedModel, timm_artifact: Path) -> None:
    with pytest.raises(InputError, match="input 1 is int; this text model expects strings"):
        text_model.predict(["fine", 3])
    with pytest.raises(InputError, match="predict got int.*expects strings"):
        text_model.predict(42)
    with pytest.raises(InputError, match="top_k=0"):
        text_model.predict("x", top_k=0)
    image_model = zoo.load(timm_artifact)
    with pytest.raises(InputError, match="image file 'nope.jpg' does not exist"):
        image_model.predict("nope.jpg")
    with pytest.raises(InputError, match=r"dtype float64 and shape \(8, 8, 3\).*model\(pixel_values=...\)"):
        image_model.predict(np.zeros((8, 8, 3)))


def test_predict_images_from_paths_pil_and_arrays(timm_artifact: Path, image_file: Path) -> None:
    from PIL import Image

    model = zoo.load(timm_artifact)
    pil = Image.open(image_file)
    results = model.predict([image_file, str(image_file), pil, np.asarray(pil.convert("RGB"))], top_k=3)
    assert {r.labels for r in results} == {results[0].labels}
    assert set(results[0].labels) == {"cat", "dog", "bird"}
    assert np.allclose([r.scores for r in results], results[0].scores, atol=1e-6)


def test_predict_token_classification(ner_artifact: Path) -> None:
    result = zoo.load(ner_artifact).predict("Barack Obama was born in Honolulu and moved to Chicago")
    assert isinstance(result, TokenClassification)
    # the tiny model's weights are seeded (tests/tiny.py), so what it tags is fixed: it tags something
    assert result.entities, "the seeded tiny NER model tags no entity in this sentence"
    for e in result.entities:
        assert e.label in {"PER", "ORG", "LOC"} and 0 <= e.start < e.end <= len(result.text)
        assert e.word == result.text[e.start:e.end] and 0 < e.score <= 1


def test_group_entities_follows_bio_tags() -> None:
    from zoo.tasks.token_classification import group_entities

    words = [("B-PER", 0.9, 0, 6), ("I-PER", 0.7, 7, 12), ("O", 0.99, 13, 16), ("I-LOC", 0.8, 17, 23),
             ("B-LOC", 0.6, 24, 30), ("B-LOC", 0.5, 31, 35), ("I-LOC", 0.4, 36, 40)]
    assert group_entities(words) == [("PER", pytest.approx(0.8), 0, 12), ("O", 0.99, 13, 16),
                                     ("LOC", 0.8, 17, 23), ("LOC", 0.6, 24, 30),
                                     ("LOC", pytest.approx(0.45), 31, 40)]


def test_predict_embeddings(minilm_artifact: Path) -> None:
    model = zoo.load(minilm_artifact)
    vectors = model.predict(SENTENCES[:3])
    assert all(isinstance(v, Embedding) and v.shape == (384,) for v in vectors)
    assert np.allclose(np.linalg.norm(np.stack(vectors), axis=1), 1.0, atol=1e-5)


def test_numpy_pooling_when_graph_returns_hidden_states() -> None:
    from zoo.tasks.feature_extraction import pool

    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert np.allclose(pool(hidden, mask, "mean"), [[1, 2], [6, 7]])
    assert np.allclose(pool(hidden, mask, "cls"), [[0, 1], [6, 7]])
    assert np.allclose(pool(hidden, mask, "max"), [[2, 3], [6, 7]])
    assert np.allclose(pool(hidden, mask, "lasttoken"), [[2, 3], [6, 7]])
    with pytest.raises(ArtifactError, match="pooling 'median'"):
        pool(hidden, mask, "median")


# ---------------------------------------------------------------- threads


def test_eight_threads_match_serial_calls(text_model: ExportedModel) -> None:
    inputs = [SENTENCES[i % len(SENTENCES)] + " " * (i % 3) + str(i) for i in range(64)]
    serial = [text_model.predict(s, top_k=2) for s in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda s: text_model.predict(s, top_k=2), inputs))
    assert [r.labels for r in threaded] == [r.labels for r in serial]
    assert np.array_equal([r.scores for r in threaded], [r.scores for r in serial])


def test_eight_threads_on_images(timm_artifact: Path, image_file: Path) -> None:
    from PIL import Image

    model = zoo.load(timm_artifact)
    base = Image.open(image_file).convert("RGB")
    images = [base.rotate(angle) for angle in range(0, 360, 15)]
    serial = [model.predict(img, top_k=3).scores for img in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda img: model.predict(img, top_k=3).scores, images))
    assert np.array_equal(threaded, serial)


# ---------------------------------------------------------------- no torch on the runtime path

_PROBE = """
import sys, json
import zoo
model = zoo.load(sys.argv[1])
out = model.predict(sys.argv[2:] if model.task != "image-classification" else [sys.argv[2]])
heavy = sorted(m for m in ("torch", "transformers", "timm", "torchvision") if m in sys.modules)
print(json.dumps({"heavy": heavy, "n": len(out)}))
"""


@pytest.mark.parametrize("which", ["text", "image"])
def test_runtime_imports_no_torch(which: str, text_cls_artifact: Path, timm_artifact: Path,
                                  image_file: Path) -> None:
    art, arg = (text_cls_artifact, "hello there") if which == "text" else (timm_artifact, str(image_file))
    done = subprocess.run([sys.executable, "-c", _PROBE, str(art), arg], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"heavy": [], "n": 1}


def test_probe_would_see_torch() -> None:
    """The twin: the same probe reports torch when something on the path imports it."""
    code = "import sys, zoo.create, torch; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True"
