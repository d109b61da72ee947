"""The real all-MiniLM-L6-v2 package exports as a whole sentence-embedding pipeline.

Its artifact, run with only ``tokenizers`` + onnxruntime, must give the embeddings
that sentence-transformers' own ``encode`` gives, 256-token truncation included.

    .venv/bin/pytest tests/test_export_minilm.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# one worker builds the module's artifacts once (make test runs --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export-minilm")]

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome, I would watch it again.",
    "Le chat dort sur le canapé.",
    "ok",
    # far past 256 tokens, and the topic changes after them: truncation decides the embedding
    " ".join(["The committee discussed the annual budget, the new library and the harbour repairs."] * 20
             + ["My cat loves chasing red laser dots around the kitchen at night."] * 20),
]


@pytest.fixture(scope="module")
def minilm_artifact(minilm_dir: Path, tmp_path_factory) -> Path:
    from exporters.onnx import export_onnx

    return export_onnx(str(minilm_dir), out=tmp_path_factory.mktemp("art") / "minilm").path


def _artifact_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """What a torch-free runtime does: tokenizer.json + the manifest's settings, then onnxruntime."""
    import onnxruntime as ort

    from zoo.artifact import read_manifest
    from zoo.tasks.preprocess import TextPreprocessor

    manifest = json.loads((folder / "manifest.json").read_text())
    feed = TextPreprocessor(folder, read_manifest(folder))(texts).arrays
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run([manifest["outputs"][0]["name"]], feed)[0]


def test_minilm_matches_sentence_transformers_encode(minilm_artifact: Path, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    assert model.max_seq_length == 256
    expected = model.encode(SENTENCES, convert_to_numpy=True)
    got = _artifact_embeddings(minilm_artifact, SENTENCES)
    assert got.shape == expected.shape == (len(SENTENCES), 384)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised like ST


def test_truncation_is_what_sentence_transformers_uses(minilm_artifact: Path, minilm_dir: Path) -> None:
    """Planted fault twin: tokenising without the 256-token limit changes the long text's embedding."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    from zoo.tasks.preprocess import TextPreprocessor

    def runtime_tokenizer(folder: Path, record: dict) -> object:
        return TextPreprocessor.from_record(folder, record, []).tokenizer

    manifest = json.loads((minilm_artifact / "manifest.json").read_text())
    pp = manifest["preprocess"]
    assert (pp["max_length"], pp["pooling"], pp["normalize"]) == (256, "mean", True)
    assert manifest["task"] == "feature-extraction" and manifest["outputs"][0]["name"] == "embeddings"
    assert len(runtime_tokenizer(minilm_artifact, pp).encode(SENTENCES[-1]).ids) == 256

    untruncated = runtime_tokenizer(minilm_artifact, {**pp, "max_length": 512}).encode(SENTENCES[-1])
    assert len(untruncated.ids) == 512
    session = ort.InferenceSession(str(minilm_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": [untruncated.ids], "attention_mask": [untruncated.attention_mask],
            "token_type_ids": [untruncated.type_ids]}
    wrong = session.run(None, {k: np.asarray(v, dtype=np.int64) for k, v in feed.items()})[0][0]
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode([SENTENCES[-1]])[0]
    assert float(wrong @ expected / np.linalg.norm(wrong) / np.linalg.norm(expected)) < 0.99


def test_minilm_artifact_verifies_on_its_own_and_against_source(minilm_artifact: Path) -> None:
    from exporters.verify import verify_artifact

    manifest = json.loads((minilm_artifact / "manifest.json").read_text())
    report = manifest["verification"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["cosine similarity"]["passed"] and checks["tokenizer.json reproduces tokenisation"]["passed"]
    assert any(s.startswith("long [3x256]") for s in report["shapes"])
    assert verify_artifact(minilm_artifact, against_source=True).passed
