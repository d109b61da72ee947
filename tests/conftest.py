from __future__ import annotations

import os

# Nothing in the suite may wait on a hub that cannot answer.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402
# Exported artifacts shared by the export, verify and runtime tests, built once per worker.
from tests.artifacts import (  # noqa: E402,F401  (pytest fixtures)
    ast_artifact, ast_folder, image_file, minilm_artifact, ner_artifact, ner_folder, text_cls_artifact, timm_artifact,
    whisper,
)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return tiny.minilm_dir()


@pytest.fixture(scope="session")
def registry():
    from zoo.registry import load_registry

    return load_registry()


@pytest.fixture(scope="session")
def tiny_text_classifier(tmp_path_factory, registry):
    """A local save_pretrained folder: tiny BERT sequence classifier with the MiniLM tokenizer."""
    return tiny.tiny_hf_folder(registry.get("bert-base"), tmp_path_factory.mktemp("tiny-bert-cls"))


@pytest.fixture(scope="session")
def tiny_timm_folder(tmp_path_factory):
    """A timm folder (save_for_hf layout) of timm's own test_resnet with 3 labels."""
    import timm

    from zoo.resolver import resolve
    from zoo.sources import timm as timm_source

    folder = tmp_path_factory.mktemp("tiny-timm")
    spec = resolve("timm:test_resnet")
    import dataclasses

    spec = dataclasses.replace(spec, labels=("cat", "dog", "bird"))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    timm_source.save_model(model, spec, folder)
    return folder
