"""Every registry entry, shrunk and random-initialised, exports to ONNX and verifies.

    .venv/bin/pytest tests/test_export_registry.py -n 2
"""

from __future__ import annotations

import json

import pytest

from tests import tiny
from zoo.registry import load_registry

ALIASES = load_registry().names()


def test_every_registry_entry_is_covered() -> None:
    """Guard: an entry added to registry.yaml without a tiny form fails here, not silently."""
    registry = load_registry()
    assert set(ALIASES) == set(registry.names())
    missing = [alias for alias in registry.names()
               if registry.get(alias).arch not in (tiny.HF_TINY if registry.get(alias).source == "hf"
                                                   else tiny.TIMM_TINY)]
    assert not missing, f"registry entries without a tiny form in tests/tiny.py: {missing}"


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
