"""Every registry entry, shrunk and random-initialised, exports to ONNX and verifies.

    .venv/bin/pytest tests/test_export_registry.py -n 2
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import tiny
from zoo.registry import load_registry

# Entries whose tiny form (the same tiny_hf_folder, the default tolerances and export settings) another
# test already exports, verifies and runs end to end: a second export here would repeat the same graph
# for minutes of CI. Each maps to (the test file that exports it, the string naming it there); the
# guard below fails if that file stops naming it or the entry gains settings of its own.
EXPORTED_ELSEWHERE = {
    "detr-resnet-50": ("test_detection.py", '"detr-resnet-50"'),
    "yolos-tiny": ("test_detection.py", '"yolos-tiny"'),
    "rtdetr-r18": ("test_detection.py", '"rtdetr-r18"'),
    "depth-anything-v2-small": ("test_depth.py", '"depth-anything-v2-small"'),
    "segformer-b0-ade": ("test_segmentation.py", '"segformer-b0-ade"'),
    "ast-audioset": ("artifacts.py", '"ast-audioset"'),
    "wav2vec2-ks": ("test_audio_train.py", '"wav2vec2-ks"'),
    "smollm2-135m": ("test_text_generation.py", '"smollm2-135m"'),
    "gpt2": ("test_text_generation.py", '"gpt2"'),
    "qwen2.5-0.5b": ("test_serve_openai.py", '"qwen2.5-0.5b"'),
    "mistral-7b": ("test_text_generation.py", '"mistral-7b"'),
    "phi-3-mini": ("test_text_generation.py", '"phi-3-mini"'),
    "gemma-2b": ("test_text_generation.py", '"gemma-2b"'),
    "qwen3-0.6b": ("test_text_generation.py", '"qwen3-0.6b"'),
    "gemma-2-2b": ("test_text_generation.py", '"gemma-2-2b"'),
    "gemma-3-1b": ("test_text_generation.py", '"gemma-3-1b"'),
    "dinov2-small-hf": ("test_image_embeddings.py", '"dinov2-small-hf"'),
    "clip-vit-b32": ("test_zero_shot.py", '"clip"'),
    "bert-ner": ("artifacts.py", '"bert-ner"'),
    "bert-base": ("conftest.py", '"bert-base"'),
    "whisper-tiny": ("test_whisper_timestamps.py", '"whisper-tiny"'),
}
ALIASES = [alias for alias in load_registry().names() if alias not in EXPORTED_ELSEWHERE]


def test_every_registry_entry_is_covered() -> None:
    """Guard: an entry added to registry.yaml without a tiny form fails here, not silently."""
    registry = load_registry()
    assert set(ALIASES) | set(EXPORTED_ELSEWHERE) == set(registry.names())
    missing = [alias for alias in registry.names()
               if registry.get(alias).arch not in (tiny.HF_TINY if registry.get(alias).source == "hf"
                                                   else tiny.TIMM_TINY)]
    assert not missing, f"registry entries without a tiny form in tests/tiny.py: {missing}"


def _not_exported_elsewhere(entries: dict[str, tuple[str, str]]) -> list[str]:
    from zoo.spec import ExportSettings, Tolerances

    registry = load_registry()
    problems = []
    for alias, (test_file, naming) in entries.items():
        if naming not in (Path(__file__).parent / test_file).read_text():
            problems.append(f"{test_file} no longer exports {alias}")
        entry = registry.get(alias)
        if (entry.verify, entry.export) != (Tolerances(), ExportSettings()):
            problems.append(f"{alias} has settings of its own: export it here again")
    return problems


def test_entries_left_to_other_tests_are_exported_there_with_default_settings() -> None:
    assert not _not_exported_elsewhere(EXPORTED_ELSEWHERE)
    # the twin: an entry left to a file that does not name it is caught
    assert _not_exported_elsewhere({"resnet18": ("test_depth.py", '"resnet18"')}) == [
        "test_depth.py no longer exports resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_registry_entry_exports_and_verifies(alias: str, tmp_path, registry, monkeypatch) -> None:
    import exporters.source
    from exporters.onnx import export_onnx
    from exporters.verify import verify_artifact
    from zoo.tasks import get_task

    # one seed keeps 18 exports affordable; every shape of the grid is still checked, and the
    # full three-seed grid runs in tests/test_export.py and tests/test_export_minilm.py
    monkeypatch.setattr(exporters.source, "SEEDS", (0,))

    spec, model_kwargs, pretrained = tiny.shrink(registry.get(alias), tmp_path / "model")
    result = export_onnx(spec, out=tmp_path / "artifact", model_kwargs=model_kwargs, random_init=not pretrained)

    assert result.report.passed, result.report.summary()
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["task"] == spec.task and manifest["verified"] is True
    assert [i["name"] for i in manifest["inputs"]] == [i.name for i in spec.inputs]
    assert manifest["inputs"][0]["shape"][0] == "batch"
    names = {c.name for c in result.report.checks}
    assert {"dynamic axes", "shape grid", "onnx.checker + shape inference"} <= names
    if get_task(spec.task).modality == "text":
        assert "tokenizer.json" in manifest["preprocess"]["files"]
        assert manifest["inputs"][0]["shape"][1] == "sequence"
    elif get_task(spec.task).modality == "audio":
        assert manifest["preprocess"]["features"] == spec.preprocess.features
        assert manifest["preprocess"]["sampling_rate"] == spec.preprocess.sampling_rate
    else:
        assert manifest["preprocess"]["input_size"] == list(spec.preprocess.input_size)
    assert verify_artifact(result.path).passed
