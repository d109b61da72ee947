"""Property-based tests: whatever comes in, zoo answers with a result or a typed zoo error, nothing else.

    .venv/bin/pytest tests/test_properties.py

Manifests (arbitrary JSON, and mutations of real ones, parsed alone and then
loaded, run and verified), runtime inputs (any text, any image mode, size or
bytes, arrays of any dtype and rank through the raw graph and ``predict``) and
registry YAML (any text, and near-valid entries). The budgets are modest so the
suite stays quick; raise ``max_examples`` locally to search harder.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zoo
from zoo.errors import ZooError
from zoo.manifest import Manifest
from zoo.runtime import Classification

# No example database in the repository; modest budgets, scaled by ZOO_HYPOTHESIS_SCALE for a deeper search
# (ZOO_HYPOTHESIS_SCALE=20 pytest tests/test_properties.py); loading a model is slower than hypothesis expects.
# No deadline and no too_slow health check anywhere: both time the examples, so a loaded machine would fail them.
_SCALE = float(os.environ.get("ZOO_HYPOTHESIS_SCALE", "1"))
FAST = settings(max_examples=int(100 * _SCALE), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=int(60 * _SCALE), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
VERIFY = settings(max_examples=int(25 * _SCALE), deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])

_COUNTER = itertools.count()


def typed_or_result(call: Callable[[], Any]) -> Any:
    """Run ``call``; a ZooError is an accepted answer (returned as None), any other exception fails the test."""
    try:
        return call()
    except ZooError:
        return None


# ---------------------------------------------------------------- JSON values

TRICKY_STRINGS = st.sampled_from(["", "../x", "/etc/passwd", "a//b", "tokenizer.json", "model.onnx", "\x00",
                                  "test_data_set_0/input_0.pb", "x" * 300, "C:\\x", "\ud800", "é", "float32",
                                  "text-classification", "mean", "left", "bicubic"])
TRICKY_NUMBERS = st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308, 1e-308,
                                  float("nan"), float("inf"), True, False])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | TRICKY_STRINGS | TRICKY_NUMBERS)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | TRICKY_STRINGS, inner, max_size=4), max_leaves=12)


RUNTIME_FIELDS = ["preprocess", "inputs", "outputs", "labels", "task", "files", "tolerances", "spec", "format_version"]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a node under ``value``, itself included."""
    out = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out += _paths(child, (*prefix, key))
    return out


@st.composite
def mutations(draw: Any, original: dict[str, Any]) -> dict[str, Any]:
    """A real manifest with one to three fields replaced, deleted, added or nudged to an edge value."""
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        # mostly the fields a reader acts on; the free-form ones (versions, verification) less often
        field = draw(st.sampled_from([f for f in RUNTIME_FIELDS if f in data] or sorted(data))
                     | st.sampled_from(sorted(data) + ["<new>"]))
        if field == "<new>" or not data:
            data[draw(st.text(max_size=8))] = draw(JSON)
            continue
        path = draw(st.sampled_from(_paths(data[field], (field,))))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key, action = path[-1], draw(st.sampled_from(["replace", "delete", "edge", "insert"]))
        if action == "delete":
            del parent[key]
        elif action == "edge":
            parent[key] = draw(TRICKY_NUMBERS | TRICKY_STRINGS | st.just([]) | st.just({}) | st.none())
        elif action == "insert" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=8) | TRICKY_STRINGS)] = draw(JSON)
        elif action == "insert" and isinstance(parent[key], list):
            parent[key].insert(draw(st.integers(0, len(parent[key]))), draw(JSON))
        else:
            parent[key] = draw(JSON)
    return data


def _manifest_json(art: Path) -> dict[str, Any]:
    return json.loads((art / "manifest.json").read_text())


# ---------------------------------------------------------------- manifests, parsed


@FAST
@given(data=JSON)
def test_any_json_is_a_manifest_or_an_artifact_error(data: Any) -> None:
    typed_or_result(lambda: Manifest.from_dict(data))


@FAST
@given(fields=st.dictionaries(st.sampled_from(sorted(f for f in Manifest.__dataclass_fields__)), JSON, max_size=12))
def test_any_fields_behind_a_valid_header(fields: dict[str, Any]) -> None:
    data = {**fields, "format": "zoo-artifact", "format_version": 1}
    manifest = typed_or_result(lambda: Manifest.from_dict(data))
    if manifest is not None:
        assert Manifest.from_dict(manifest.to_dict()) == manifest  # whatever parses round-trips
        typed_or_result(manifest.model_spec)


@pytest.fixture(scope="module")
def real_manifests(text_cls_artifact: Path, timm_artifact: Path) -> list[dict[str, Any]]:
    return [_manifest_json(text_cls_artifact), _manifest_json(timm_artifact)]


@FAST
@given(data=st.data())
def test_mutated_real_manifests_parse_or_fail_typed(real_manifests: list[dict[str, Any]], data: Any) -> None:
    original = data.draw(st.sampled_from(real_manifests))
    mutated = data.draw(mutations(original))
    manifest = typed_or_result(lambda: Manifest.from_dict(mutated))
    if manifest is not None:
        assert Manifest.from_dict(manifest.to_dict()) == manifest
        typed_or_result(manifest.model_spec)


# ---------------------------------------------------------------- manifests, loaded, run and verified


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: Any, text_cls_artifact: Path, timm_artifact: Path) -> dict[str, tuple[Path, dict]]:
    """Per kind: a copy whose manifest.json each example overwrites, and the original manifest."""
    root = tmp_path_factory.mktemp("props")
    copies = {"text": text_cls_artifact, "image": timm_artifact}
    return {kind: (Path(shutil.copytree(src, root / kind)), _manifest_json(src)) for kind, src in copies.items()}


def _one_input(kind: str) -> Any:
    return "a sentence to classify" if kind == "text" else np.full((40, 30, 3), 120, np.uint8)


@SLOW
@given(data=st.data())
def test_mutated_manifest_loads_and_predicts_or_fails_typed(scratch: dict[str, tuple[Path, dict]], data: Any) -> None:
    kind = data.draw(st.sampled_from(sorted(scratch)))
    art, original = scratch[kind]
    (art / "manifest.json").write_text(json.dumps(data.draw(mutations(original))))
    model = typed_or_result(lambda: zoo.load(art))
    event(f"loaded: {model is not None}")
    if model is not None:
        typed_or_result(lambda: model.predict(_one_input(kind)))
        typed_or_result(lambda: model.predict([_one_input(kind)] * 2, top_k=2))


@VERIFY
@given(data=st.data())
def test_mutated_manifest_verifies_or_fails_typed(scratch: dict[str, tuple[Path, dict]], data: Any) -> None:
    from exporters.verify import verify_artifact

    art, original = scratch["image"]
    (art / "manifest.json").write_text(json.dumps(data.draw(mutations(original))))
    typed_or_result(lambda: verify_artifact(art))


# ---------------------------------------------------------------- runtime inputs: text


@pytest.fixture(scope="module")
def text_model(text_cls_artifact: Path) -> Any:
    return zoo.load(text_cls_artifact)


@pytest.fixture(scope="module")
def image_model(timm_artifact: Path) -> Any:
    return zoo.load(timm_artifact)


ANY_TEXT = (st.text(st.characters(exclude_categories=()), max_size=200)
            | st.text(st.characters(categories=["Cs", "Cc", "Zs", "Mn"]), max_size=20)
            | st.text(max_size=3000))
NOT_TEXT = st.integers() | st.none() | st.binary(max_size=10) | st.floats() | st.lists(st.integers(), max_size=3)


def _check_classification(result: Any, labels: tuple[str, ...]) -> None:
    assert isinstance(result, Classification)
    assert result.label in labels and 0.0 <= result.score <= 1.0


@FAST
@example(inputs="a\ud800b", options={})  # tokenizers raised a bare TypeError for a lone surrogate
@given(inputs=ANY_TEXT | st.lists(ANY_TEXT | NOT_TEXT, max_size=4) | NOT_TEXT | st.dictionaries(st.text(), ANY_TEXT),
       options=st.dictionaries(st.sampled_from(["top_k", "threshold", "batch_size"]),
                               st.integers(-3, 10**6) | st.floats() | st.booleans() | st.none() | st.text(max_size=3),
                               max_size=2))
def test_any_text_input_gives_results_or_a_typed_error(text_model: Any, inputs: Any, options: dict[str, Any]) -> None:
    results = typed_or_result(lambda: text_model.predict(inputs, **options))
    if results is None:
        return
    for result in results if isinstance(results, list) else [results]:
        _check_classification(result, text_model.labels)
    if isinstance(inputs, list):
        assert len(results) == len(inputs)


# ---------------------------------------------------------------- runtime inputs: images

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
         "I;16", "I;16B", "I;16L"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA"]


@st.composite
def pil_images(draw: Any) -> Any:
    from PIL import Image

    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(0, 48)), draw(st.integers(0, 48)))
    return Image.new(mode, size, color=draw(st.integers(0, 255)) if mode not in ("F",) else 0.5)


@st.composite
def image_files(draw: Any, folder: Path) -> Path:
    """Encoded images of any format, whole, cut short or with bytes flipped; or plain random bytes."""
    from PIL import Image

    path = folder / f"img-{next(_COUNTER)}"
    if draw(st.booleans()):
        path.write_bytes(draw(st.binary(max_size=200)))
        return path
    pixels = draw(hnp.arrays(np.uint8, (draw(st.integers(1, 24)), draw(st.integers(1, 24)), 3)))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=draw(st.sampled_from(FORMATS)))
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "cut", "flip"]))
    if damage == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        for index in draw(st.lists(st.integers(0, len(data) - 1), max_size=6)):
            data[index] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


ARRAYS = hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.uint16]),
                    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24))


@FAST
@given(data=st.data())
def test_any_image_input_gives_results_or_a_typed_error(image_model: Any, tmp_path_factory: Any, data: Any) -> None:
    folder = tmp_path_factory.mktemp("images", numbered=True)
    item = data.draw(pil_images() | ARRAYS | image_files(folder) | st.just(folder / "missing.png") | NOT_TEXT)
    inputs = data.draw(st.sampled_from(["one", "list"]))
    results = typed_or_result(lambda: image_model.predict(item if inputs == "one" else [item, item]))
    if results is None:
        return
    for result in results if isinstance(results, list) else [results]:
        _check_classification(result, image_model.labels)


# ---------------------------------------------------------------- runtime inputs: the raw graph


@st.composite
def graph_feeds(draw: Any, names: list[str]) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from([*names, "extra", "pixel_values"]), unique=True, max_size=4))
    feed: dict[str, Any] = {name: draw(ARRAYS) for name in chosen}
    if draw(st.booleans()) and chosen:
        feed[chosen[0]] = draw(JSON)  # a plain Python value where an array belongs
    return feed


@FAST
@given(data=st.data())
def test_any_arrays_through_the_raw_graph(text_model: Any, image_model: Any, data: Any) -> None:
    model = data.draw(st.sampled_from([text_model, image_model]))
    feed = data.draw(graph_feeds(model.input_names))
    outputs = typed_or_result(lambda: model(**feed))
    if outputs is not None:
        assert set(outputs) == set(model.output_names)


@FAST
@given(batch=st.integers(1, 3), sequence=st.integers(1, 20), ids=st.integers(-(2**40), 2**40))
def test_well_typed_token_ids_of_any_value(text_model: Any, batch: int, sequence: int, ids: int) -> None:
    array = np.full((batch, sequence), ids, np.int64)
    feed = {name: array if name == "input_ids" else np.ones_like(array) for name in text_model.input_names}
    outputs = typed_or_result(lambda: text_model(**feed))
    if outputs is not None:
        assert next(iter(outputs.values())).shape[0] == batch


# ---------------------------------------------------------------- registry YAML


def _load_registry_text(folder: Path, text: str) -> Any:
    from zoo.registry import load_registry

    path = folder / f"registry-{next(_COUNTER)}.yaml"  # a new path: load_registry caches by path and mtime
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return typed_or_result(lambda: load_registry([str(path)]))


YAML_TEXT = (st.text(max_size=200)
             | st.lists(st.sampled_from(["models:", "  a:", "    source: hf", "    id: x", "    task: [", "- 1",
                                         "  ? [a, b]\n  : 1", "&x [*x]", "!!python/object:os.system {}", "\t",
                                         "    preprocess: {mean: 5}", "    labels: 3", "%YAML 9.9", "---"]),
                        max_size=8).map("\n".join))

OPTIONAL_KEYS = ["revision", "arch", "inputs", "labels", "description", "trust_remote_code", "unknown"]
VALID_PARTS = {"source": st.sampled_from(["hf", "timm"]), "id": st.sampled_from(["org/model", "resnet18"]),
               "task": st.sampled_from(["text-classification", "image-classification", "feature-extraction"])}
_VALID_ENTRY = {"source": "hf", "id": "org/model", "task": "text-classification"}
SECTION_KEYS = {"preprocess": ["input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode", "max_length",
                               "pooling", "normalize"],
                "export": ["opset"], "verify": ["atol", "rtol", "cosine"]}


@st.composite
def registry_entries(draw: Any) -> Any:
    """A valid entry with one or two fields (top-level or inside a section) set to any JSON value."""
    entry: dict[str, Any] = {k: draw(v) for k, v in VALID_PARTS.items()}
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from([*VALID_PARTS, *OPTIONAL_KEYS]) | st.sampled_from(sorted(SECTION_KEYS)))
        if where in SECTION_KEYS and draw(st.integers(0, 3)) > 0:
            section = entry[where] = entry[where] if isinstance(entry.get(where), dict) else {}
            section[draw(st.sampled_from(SECTION_KEYS[where]))] = draw(JSON)
        else:
            entry[where] = draw(JSON)
    return entry


@FAST
@given(text=YAML_TEXT)
def test_any_registry_text_is_a_registry_or_a_registry_error(tmp_path_factory: Any, text: str) -> None:
    _load_registry_text(tmp_path_factory.getbasetemp(), text)


@FAST
@given(entries=st.dictionaries(st.text(min_size=1, max_size=8), registry_entries(), min_size=1, max_size=3))
def test_near_valid_registry_entries(tmp_path_factory: Any, entries: dict[str, Any]) -> None:
    text = yaml.safe_dump({"models": entries}, allow_unicode=True)
    registry = _load_registry_text(tmp_path_factory.getbasetemp(), text)
    if registry is not None:
        for alias in yaml.safe_load(text)["models"]:  # YAML may normalise an alias (line breaks, e.g. U+0085)
            assert registry.get(str(alias)).name == str(alias)


@FAST
# each of these passed validation and then failed untyped in ModelSpec.from_dict (TypeError, ValueError)
@example(entry={**_VALID_ENTRY, "preprocess": {"mean": 5}})
@example(entry={**_VALID_ENTRY, "labels": 3})
@example(entry={**_VALID_ENTRY, "preprocess": {"input_size": ["a", "b", "c"]}})
@given(entry=JSON | registry_entries())
def test_validate_entry_then_build_never_raises_untyped(entry: Any) -> None:
    from zoo.registry import entry_to_spec, validate_entry

    problems = validate_entry(entry)
    assert isinstance(problems, list)
    if not problems:
        typed_or_result(lambda: entry_to_spec("alias", entry))
