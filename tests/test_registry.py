"""The registry file format: validation, merging, round-trips."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from zoo.errors import RegistryError
from zoo.registry import entry_to_spec, load_registry, spec_to_entry, validate_entry
from zoo.spec import SOURCES, TASKS, ModelSpec


def test_curated_registry_covers_both_sources_and_all_tasks(registry):
    specs = [registry.get(n) for n in registry.names()]
    assert len(specs) >= 16
    assert {s.source for s in specs} == set(SOURCES)
    assert {s.task for s in specs} == set(TASKS)
    for spec in specs:
        # a decoder's cache inputs (one key and value per layer) depend on its depth: read from config.json
        assert spec.inputs or spec.task in ("text-generation", "text2text-generation"), spec.name
        assert spec.description, spec.name
        assert spec.export.opset >= 17, spec.name


@pytest.mark.parametrize("alias", load_registry().names())
def test_entry_round_trips_through_yaml(registry, alias):
    spec = registry.get(alias)
    text = yaml.safe_dump({"models": {alias: spec_to_entry(spec)}})
    again = entry_to_spec(alias, yaml.safe_load(text)["models"][alias])
    assert again == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_user_file_adds_and_overrides_field_by_field(tmp_path, monkeypatch):
    extra = _write(tmp_path, "mine.yaml", """
        models:
          resnet50:
            verify: {atol: 0.01}
          my-vit:
            source: timm
            id: vit_tiny_patch16_224.augreg_in21k_ft_in1k
            task: image-classification
            description: mine
    """)
    reg = load_registry([extra])
    assert reg.get("resnet50").verify.atol == 0.01
    assert reg.get("resnet50").verify.rtol == load_registry().get("resnet50").verify.rtol
    assert reg.get("resnet50").source_id == "resnet50.a1_in1k"
    assert reg.get("my-vit").description == "mine"
    monkeypatch.setenv("ZOO_REGISTRY", extra)
    assert "my-vit" in load_registry()


def test_all_problems_are_reported_at_once_with_file_line_entry_field(tmp_path):
    bad = _write(tmp_path, "bad.yaml", """
        models:
          ok-one:
            source: timm
            id: resnet18
            task: image-classification
          broken:
            source: tensorflow
            id: x
            task: image-clasification
            verfy: {atol: 1}
          no-id:
            source: hf
            task: text-classification
            verify: {atol: -1}
    """)
    with pytest.raises(RegistryError) as info:
        load_registry([bad])
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 5, problems
    assert f"{bad}:7: entry 'broken': source: 'tensorflow'" in text
    assert "did you mean 'image-classification'" in text
    assert "unknown field 'verfy' (did you mean 'verify'?)" in text
    assert f"{bad}:12: entry 'no-id': missing field 'id'" in text
    assert "verify.atol: must be a number >= 0" in text


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = _write(tmp_path, "broken.yaml", "models:\n  a: [1, 2\n  b: 3\n")
    with pytest.raises(RegistryError, match=r"broken.yaml:\d+: not valid YAML"):
        load_registry([bad])


def test_missing_registry_file_is_named(tmp_path):
    with pytest.raises(RegistryError, match="cannot read registry file"):
        load_registry([str(tmp_path / "nope.yaml")])


def test_validate_entry_accepts_a_complete_entry_and_rejects_bad_inputs():
    good = {"source": "hf", "id": "a/b", "task": "feature-extraction",
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "preprocess": {"max_length": 128, "pooling": "mean"}}
    assert validate_entry(good) == []
    bad = dict(good, inputs=[{"name": "x", "dtype": "float16", "shape": "batch"}],
               preprocess={"pooling": "median", "max_length": 0}, export={"opset": 99})
    errs = validate_entry(bad)
    assert any("dtype" in e for e in errs)
    assert any("shape" in e for e in errs)
    assert any("pooling" in e for e in errs)
    assert any("max_length" in e for e in errs)
    assert any("opset" in e for e in errs)
