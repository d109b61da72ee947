"""Artifacts and inputs as untrusted data: confinement, hashes before parsing, limits, racing exports.

    .venv/bin/pytest tests/test_hardening.py

Every planted fault is refused by ``zoo verify`` and by ``zoo.load`` (and through
the CLI in a real subprocess: exit code 1, one line, no traceback unless --debug).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from tests.artifacts import copy_artifact
from zoo.artifact import hash_files, publish, read_manifest, staged_dir
from zoo.errors import ArtifactError, ConfigError, InputError
from zoo.manifest import Manifest, path_problem

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- planting faults


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict, *, rehash: bool = False) -> None:
    """Write ``manifest``; with ``rehash`` the files' hashes are forged to match the folder as it now is."""
    if rehash:
        entries = hash_files(folder)
        manifest["files"] = {rel: {"sha256": e.sha256, "size": e.size} for rel, e in entries.items()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def plant_traversal(art: Path) -> str:
    """files and preprocess.files name ../outside.json, with that file's true sha256 (issue 11's report)."""
    outside = art.parent / "outside.json"
    outside.write_text('{"pad_token": "[PAD]"}')
    manifest = _manifest(art)
    data = outside.read_bytes()
    manifest["files"]["../outside.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["preprocess"]["files"].append("../outside.json")
    _write_manifest(art, manifest)
    return r"entry '\.\./outside\.json' leads out of the artifact folder"


def plant_traversal_in_files(art: Path) -> str:
    """Only ``files`` names the outside file (a golden set the runtime would never open by name)."""
    outside = art.parent / "input_9.pb"
    outside.write_bytes(b"")
    manifest = _manifest(art)
    manifest["files"]["test_data_set_0/../../input_9.pb"] = {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0}
    _write_manifest(art, manifest)
    return r"files entry 'test_data_set_0/\.\./\.\./input_9\.pb' leads out of the artifact folder"


def plant_symlink_out(art: Path) -> str:
    """tokenizer.json becomes a symlink to an identical copy outside the folder: the hash still matches."""
    outside = art.parent / "elsewhere-tokenizer.json"
    shutil.move(str(art / "tokenizer.json"), outside)
    (art / "tokenizer.json").symlink_to(outside)
    return r"'tokenizer\.json' leads out of the artifact through a symlink"


def plant_symlinked_parent(art: Path) -> str:
    """A golden data folder moved out and linked back: each file's own name has no symlink in it."""
    outside = art.parent / "elsewhere-golden"
    shutil.move(str(art / "test_data_set_0"), outside)
    (art / "test_data_set_0").symlink_to(outside, target_is_directory=True)
    return r"'test_data_set_0/input_0\.pb' leads out of the artifact through a symlink"


def plant_oversized_tensor(art: Path) -> str:
    """A golden tensor whose header claims 2**60 float elements over 16 bytes of data; hashes forged."""
    from onnx import TensorProto

    proto = TensorProto(name="input_ids", data_type=TensorProto.FLOAT, dims=[2**20, 2**20, 2**20],
                        raw_data=b"\0" * 16)
    (art / "test_data_set_0" / "input_0.pb").write_bytes(proto.SerializeToString())
    _write_manifest(art, _manifest(art), rehash=True)
    return r"input_0\.pb: dims \[1048576, 1048576, 1048576\] claim 1152921504606846976 elements"


def plant_external_tensor(art: Path) -> str:
    """A golden tensor that points at external data (a path onnx would read); hashes forged."""
    from onnx import TensorProto

    proto = TensorProto(name="input_ids", data_type=TensorProto.FLOAT, dims=[4],
                        data_location=TensorProto.EXTERNAL)
    entry = proto.external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    (art / "test_data_set_0" / "input_0.pb").write_bytes(proto.SerializeToString())
    _write_manifest(art, _manifest(art), rehash=True)
    return r"input_0\.pb: the tensor points at external data"


def plant_future_version(art: Path) -> str:
    manifest = _manifest(art)
    manifest["format_version"] = 2
    _write_manifest(art, manifest)
    return r"has format_version 2; this zoo reads up to 1"


def plant_truncated_model(art: Path) -> str:
    data = (art / "model.onnx").read_bytes()
    (art / "model.onnx").write_bytes(data[: len(data) // 3])
    return r"refusing it: model\.onnx: size \d+ != \d+ in the manifest"


def plant_truncated_model_forged(art: Path) -> str:
    """Truncated, and the manifest's hashes forged to match: the parse itself must fail in one line."""
    plant_truncated_model(art)
    _write_manifest(art, _manifest(art), rehash=True)
    return r"model\.onnx.*damaged"


def plant_manifest_symlink(art: Path) -> str:
    outside = art.parent / "elsewhere-manifest.json"
    shutil.move(str(art / "manifest.json"), outside)
    (art / "manifest.json").symlink_to(outside)
    return r"'manifest\.json' leads out of the artifact through a symlink"


def plant_nested_manifest(art: Path) -> str:
    (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return r"manifest\.json is not valid JSON \(maximum recursion depth"


def plant_huge_image_size(art: Path) -> str:
    manifest = _manifest(art)
    manifest["preprocess"]["input_size"] = [3, 10**9, 10**9]
    _write_manifest(art, manifest)
    return r"preprocess\.input_size must be \[channels 1\.\.4, height, width\]"


FAULTS: dict[str, tuple[Callable[[Path], str], str]] = {
    # name: (planter, which shared artifact it is planted in)
    "traversal": (plant_traversal, "text"),
    "traversal-in-files": (plant_traversal_in_files, "image"),
    "symlink-out": (plant_symlink_out, "text"),
    "symlinked-parent": (plant_symlinked_parent, "text"),
    "oversized-tensor": (plant_oversized_tensor, "text"),
    "external-tensor": (plant_external_tensor, "image"),
    "future-format-version": (plant_future_version, "image"),
    "truncated-model": (plant_truncated_model, "image"),
    "truncated-model-forged-hash": (plant_truncated_model_forged, "image"),
    "manifest-symlink-out": (plant_manifest_symlink, "text"),
    "nested-manifest": (plant_nested_manifest, "text"),
    "absurd-input-size": (plant_huge_image_size, "image"),
}


@pytest.fixture
def planted(request, text_cls_artifact: Path, timm_artifact: Path, tmp_path: Path) -> tuple[Path, str]:
    plant, which = FAULTS[request.param]
    art = copy_artifact(text_cls_artifact if which == "text" else timm_artifact, tmp_path / "art")
    return art, plant(art)


def _verify(folder: Path) -> None:
    _verify_report(folder)


def _verify_report(folder: Path):
    from exporters.verify import verify_artifact

    return verify_artifact(folder)


@pytest.mark.slow
@pytest.mark.parametrize("planted", list(FAULTS), indirect=True)
def test_planted_fault_is_refused_by_verify_and_load(planted: tuple[Path, str]) -> None:
    art, expected = planted
    with pytest.raises(ArtifactError) as by_verify:
        _verify(art)
    with pytest.raises(ArtifactError) as by_load:
        zoo.load(art)
    for info in (by_verify, by_load):
        assert re.search(expected, str(info.value)), str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_trusted_fast_load_skips_only_hashes_and_golden_headers(text_cls_artifact: Path, tmp_path: Path) -> None:
    """check_hashes=False is the documented fast path for a trusted artifact: paths and sizes still count."""
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    plant_oversized_tensor(art)
    assert zoo.load(art, check_hashes=False).predict("still runs").label in ("negative", "positive")
    plant_symlink_out(art)
    with pytest.raises(ArtifactError, match="leads out of the artifact through a symlink"):
        zoo.load(art, check_hashes=False)


def _zoo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("planted", ["traversal", "symlink-out", "oversized-tensor", "future-format-version",
                                     "truncated-model", "truncated-model-forged-hash"], indirect=True)
def test_planted_fault_is_one_line_from_the_cli(planted: tuple[Path, str]) -> None:
    art, expected = planted
    for command in (["verify", str(art)], ["predict", str(art), "some input"]):
        done = _zoo(*command)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
        assert re.search(expected, done.stderr), done.stderr
        assert done.stdout == ""
    debug = _zoo("--debug", "verify", str(art))
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ArtifactError" in debug.stderr


def test_nothing_is_read_from_outside_during_a_refused_load(text_cls_artifact: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    plant_traversal(art)
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(ArtifactError, match="leads out of the artifact"):
        zoo.load(art)
    assert opened == [str(art / "manifest.json")], "only the manifest may be read before the refusal"


# ---------------------------------------------------------------- the path rule


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "a/", "", "C:/x",
                                 "a\\..\\b", "a\x00b", "x" * 2000, "a/" + "b" * 300])
def test_unsafe_paths_are_named(rel: str) -> None:
    assert path_problem(rel) is not None


@pytest.mark.parametrize("rel", ["model.onnx", "test_data_set_0/input_0.pb", "tokenizer.json", "a b/ü.json",
                                 ".hidden"])
def test_safe_paths_pass(rel: str) -> None:
    assert path_problem(rel) is None


def _real_manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m["files"].update({"/etc/hostname": {"sha256": "0" * 64, "size": 1}}), "files entry '/etc/hostname'"),
    (lambda m: m["preprocess"].update(files=["tokenizer.json", "sub/../tokenizer.json"]), "preprocess.files entry"),
    (lambda m: m["preprocess"].update(files=["vocab.txt"]), "preprocess.files names 'vocab.txt'"),
    (lambda m: m["preprocess"].update(max_length=10**12), "preprocess.max_length"),
    (lambda m: m["preprocess"].update(pad_token_id="0"), "preprocess.pad_token_id"),
    (lambda m: m["preprocess"].update(pooling="median"), "preprocess.pooling"),
    (lambda m: m["tolerances"].update(atol=-1), "tolerances.atol"),
    (lambda m: m["tolerances"].update(margin=1), "tolerances.margin"),
    (lambda m: m["tolerances"].update(rule="loose"), "tolerances.rule"),
    (lambda m: m["tolerances"].update(widened=3), "tolerances.widened"),
])
def test_manifest_fields_are_bounded(text_cls_artifact: Path, mutate: Callable[[dict], None], message: str) -> None:
    manifest = _real_manifest(text_cls_artifact)
    mutate(manifest)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Manifest.from_dict(manifest)


@pytest.mark.parametrize("key, value", [("input_size", [3, 64, 100_000]), ("input_size", [7, 64, 64]),
                                        ("mean", [0.5, 0.5]), ("std", [0.5, 0, 0.5]), ("crop_pct", 1e-6),
                                        ("crop_pct", 1.5), ("interpolation", "sinc"), ("crop_mode", "zoom")])
def test_image_preprocess_fields_are_bounded(timm_artifact: Path, key: str, value: object) -> None:
    manifest = _real_manifest(timm_artifact)
    manifest["preprocess"][key] = value
    with pytest.raises(ArtifactError, match=f"preprocess.{key} must be"):
        Manifest.from_dict(manifest)


def test_untouched_manifests_still_parse(text_cls_artifact: Path, timm_artifact: Path) -> None:
    for art in (text_cls_artifact, timm_artifact):
        manifest = read_manifest(art)
        assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_oversized_manifest_is_refused_before_parsing(text_cls_artifact: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.artifact

    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    size = (art / "manifest.json").stat().st_size
    monkeypatch.setattr(zoo.artifact, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(ArtifactError, match=f"larger than {size - 1} bytes"):
        read_manifest(art)
    monkeypatch.setattr(zoo.artifact, "MAX_MANIFEST_BYTES", size)
    assert read_manifest(art).task == "text-classification"


def test_unlisted_symlinked_folder_is_not_entered(timm_artifact: Path, tmp_path: Path) -> None:
    """verify lists what the manifest does not know; a link to / must not be walked."""
    art = copy_artifact(timm_artifact, tmp_path / "art")
    (art / "root").symlink_to("/", target_is_directory=True)
    with pytest.raises(ArtifactError, match=r"root/: not in the manifest"):
        _verify(art)


def test_symlink_loop_is_refused(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    (art / "tokenizer.json").unlink()
    (art / "tokenizer.json").symlink_to(art / "tokenizer.json")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        zoo.load(art)


def test_symlink_inside_the_folder_is_allowed(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    shutil.move(str(art / "tokenizer.json"), art / "tokenizer.real.json")
    (art / "tokenizer.json").symlink_to("tokenizer.real.json")
    manifest = _manifest(art)
    manifest["files"]["tokenizer.real.json"] = manifest["files"]["tokenizer.json"]
    _write_manifest(art, manifest)
    assert zoo.load(art).predict("fine").label in ("negative", "positive")


@pytest.mark.parametrize("edit, message", [
    (lambda art: (art / "tokenizer_config.json").write_text("{not json"), "tokenizer_config.json is not valid JSON"),
    (lambda art: (art / "tokenizer_config.json").write_text("[1, 2]"), "tokenizer_config.json is not a JSON object"),
    (lambda art: (art / "tokenizer.json").write_bytes(b"\xff\xfe"), "tokenizer.json is not UTF-8 text"),
])
def test_damaged_tokenizer_files_with_forged_hashes(text_cls_artifact: Path, tmp_path: Path, edit,
                                                    message: str) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    edit(art)
    _write_manifest(art, _manifest(art), rehash=True)
    with pytest.raises(ArtifactError, match=message):
        zoo.load(art)


def test_pad_token_outside_the_vocabulary(text_cls_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    manifest = _manifest(art)
    manifest["preprocess"].update(pad_token=None, pad_token_id=10**6)
    _write_manifest(art, manifest)
    with pytest.raises(ArtifactError, match="pad token id 1000000 is not in tokenizer.json's vocabulary"):
        zoo.load(art)


def test_spec_that_is_not_a_model_spec(timm_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(timm_artifact, tmp_path / "art")
    manifest = _manifest(art)
    manifest["spec"]["preprocess"] = "bicubic"
    _write_manifest(art, manifest)
    with pytest.raises(ArtifactError, match="field 'spec' is not a model spec"):
        _verify(art)


def test_resolving_an_artifact_folder_reads_its_manifest_strictly(text_cls_artifact: Path, tmp_path: Path) -> None:
    from zoo.resolver import resolve

    art = copy_artifact(text_cls_artifact, tmp_path / "art")
    assert resolve(str(art)).origin == "artifact"
    manifest = _manifest(art)
    del manifest["spec"]
    _write_manifest(art, manifest)
    with pytest.raises(ArtifactError, match="missing field 'spec'"):
        resolve(str(art))


@pytest.mark.slow
def test_listed_file_with_an_unexpected_golden_name_is_ignored(timm_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(timm_artifact, tmp_path / "art")
    (art / "test_data_set_0" / "input_x.pb").write_bytes(b"")  # was int('x') -> ValueError in verify
    _write_manifest(art, _manifest(art), rehash=True)
    assert _verify_report(art).passed


def test_against_source_never_trusts_remote_code_from_a_manifest(timm_artifact: Path, tmp_path: Path) -> None:
    from exporters.verify import verify_artifact

    art = copy_artifact(timm_artifact, tmp_path / "art")
    manifest = _manifest(art)
    manifest["spec"]["trust_remote_code"] = True
    manifest["random_init"] = False
    _write_manifest(art, manifest)
    with pytest.raises(ConfigError, match="never runs code an artifact names"):
        verify_artifact(art, against_source=True)
    from zoo.runtime.torch_baseline import torch_model

    with pytest.raises(ConfigError, match="never runs code an artifact names"):
        torch_model(read_manifest(art))  # zoo bench --vs-torch


# ---------------------------------------------------------------- golden tensors


@pytest.mark.parametrize("make, message", [
    (lambda T: T(name="x", data_type=T.STRING, dims=[1], string_data=[b"a"]), "not a fixed-width numeric type"),
    (lambda T: T(name="x", data_type=T.FLOAT, dims=[3], float_data=[1.0, 2.0]), "claim 3 elements"),
    (lambda T: T(name="x", data_type=T.INT64, dims=[2, 2], raw_data=b"\0" * 8), "claim 4 elements"),
    (lambda T: T(name="x", data_type=T.FLOAT, dims=[1] * 40, raw_data=b"\0" * 4), "16 or fewer"),
    (lambda T: T(name="x", data_type=T.FLOAT, dims=[-1], raw_data=b""), "16 or fewer sizes >= 0"),
])
def test_golden_tensor_headers_are_checked_before_allocation(tmp_path: Path, make, message: str) -> None:
    from onnx import TensorProto

    from zoo.artifact import read_tensor

    (tmp_path / "t.pb").write_bytes(make(TensorProto).SerializeToString())
    with pytest.raises(ArtifactError, match=message):
        read_tensor(tmp_path, "t.pb")


def test_golden_tensor_round_trip_and_garbage(tmp_path: Path) -> None:
    from onnx import numpy_helper

    from zoo.artifact import read_tensor

    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    (tmp_path / "ok.pb").write_bytes(numpy_helper.from_array(array, "ids").SerializeToString())
    name, got = read_tensor(tmp_path, "ok.pb")
    assert name == "ids" and got.dtype == np.int64 and np.array_equal(got, array)
    (tmp_path / "bad.pb").write_bytes(b"\xff" * 50)
    with pytest.raises(ArtifactError, match="bad.pb is not a serialised TensorProto"):
        read_tensor(tmp_path, "bad.pb")


# ---------------------------------------------------------------- input limits


@pytest.fixture(scope="module")
def text_model(text_cls_artifact: Path):
    return zoo.load(text_cls_artifact)


@pytest.fixture(scope="module")
def image_model(timm_artifact: Path):
    return zoo.load(timm_artifact)


def test_text_beyond_the_byte_limit_is_refused(text_model, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.tasks.preprocess as pre

    monkeypatch.setattr(pre, "MAX_TEXT_BYTES", 100)
    assert text_model.predict("a" * 100).label in text_model.labels
    with pytest.raises(InputError, match="input 0 is 101 bytes of UTF-8; the limit is 100"):
        text_model.predict("a" * 101)
    with pytest.raises(InputError, match="input 1 is 102 bytes"):
        text_model.predict(["short", "é" * 51])  # 51 characters, 102 bytes


def test_lone_surrogate_is_refused(text_model) -> None:
    with pytest.raises(InputError, match="lone surrogate"):
        text_model.predict("abc\ud800def")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: Pillow reads the size without decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height, message", [
    (100_000, 100_000, "decompression-bomb guard"),  # past Pillow's own error threshold
    (10_000, 10_000, "the limit is 67108864"),  # Pillow would only warn; zoo refuses
    (9_000, 8_000, "the limit is 67108864"),  # under Pillow's warning, over zoo's limit
])
def test_decompression_bombs_are_refused_without_warnings(image_model, tmp_path: Path, width: int, height: int,
                                                          message: str) -> None:
    import warnings

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping to the caller would raise here instead
        with pytest.raises(InputError, match=message):
            image_model.predict(path)


def test_images_past_the_pixel_limit_are_refused_in_every_form(image_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    import zoo.tasks.preprocess as pre

    monkeypatch.setattr(pre, "MAX_IMAGE_PIXELS", 100 * 100)
    assert image_model.predict(np.zeros((100, 100, 3), np.uint8)).label in image_model.labels
    with pytest.raises(InputError, match="101 x 100 = 10100 pixels"):
        image_model.predict(np.zeros((100, 101, 3), np.uint8))
    with pytest.raises(InputError, match="101 x 100 = 10100 pixels"):
        image_model.predict(Image.new("RGB", (101, 100)))


def test_extreme_aspect_ratio_cannot_blow_up_the_resize(image_model) -> None:
    # 1 x 1,000,000 pixels is within the input limit; its shorter side scaled up to the crop is not
    with pytest.raises(InputError, match="aspect ratio is too extreme"):
        image_model.predict(np.zeros((1_000_000, 1), np.uint8))


@pytest.mark.parametrize("make", [
    lambda: np.zeros((0, 10, 3), np.uint8),
    lambda: __import__("PIL.Image").Image.new("RGB", (0, 5)),
])
def test_empty_images_are_refused(image_model, make) -> None:
    with pytest.raises(InputError, match="at least one pixel"):
        image_model.predict(make())


def test_truncated_and_garbage_image_files(image_model, image_file: Path, tmp_path: Path) -> None:
    data = image_file.read_bytes()
    header_only = tmp_path / "header.jpg"
    header_only.write_bytes(data[:400])
    with pytest.raises(InputError, match="header.jpg' is not an image Pillow can read"):
        image_model.predict(header_only)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])  # the header parses; the pixel data ends early
    with pytest.raises(InputError, match="cut.jpg' cannot be decoded as RGB"):
        image_model.predict(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(InputError, match="not an image Pillow can read"):
        image_model.predict(junk)


@pytest.mark.parametrize("data", [b"P6\n", b"P6 2 2 \xcd55\n"])
def test_damaged_image_headers_are_input_errors(image_model, tmp_path: Path, data: bytes) -> None:
    """Found by tests/test_properties.py: Pillow's PPM header parser raises ValueError, not OSError."""
    path = tmp_path / "damaged.ppm"
    path.write_bytes(data)
    with pytest.raises(InputError, match="damaged.ppm' is not an image Pillow can read"):
        image_model.predict(path)


def test_onnxruntime_errors_become_input_errors(text_model) -> None:
    ids = np.full((1, 4), 10**6, dtype=np.int64)  # far outside the vocabulary
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with pytest.raises(InputError, match="onnxruntime cannot run"):
        text_model(**{k: v for k, v in feed.items() if k in text_model.input_names})


def test_ragged_lists_become_input_errors(text_model) -> None:
    feed = {name: [[1, 2], [3]] for name in text_model.input_names}
    with pytest.raises(InputError, match="input_ids is not an array"):
        text_model(**feed)


def test_no_pickle_in_the_load_path() -> None:
    """What the runtime and verify import must not unpickle anything (the issue asks to state the check)."""
    paths = [ROOT / "zoo" / "artifact.py", ROOT / "zoo" / "manifest.py", ROOT / "exporters" / "golden.py",
             ROOT / "exporters" / "verify.py", *sorted((ROOT / "zoo" / "runtime").glob("*.py")),
             *sorted((ROOT / "zoo" / "tasks").glob("*.py"))]
    for path in paths:
        text = path.read_text()
        for needle in ("pickle", "torch.load", "allow_pickle=True", "np.load(", "numpy.load(", "joblib", "dill"):
            assert needle not in text, f"{path.relative_to(ROOT)} mentions {needle}"


# ---------------------------------------------------------------- racing exports


def _fill(stage: Path, writer: str) -> None:
    for i in range(20):
        (stage / f"part_{i}.txt").write_text(writer)
    (stage / "manifest.json").write_text(json.dumps({"writer": writer}))


def _race_threads(dest: Path, writers: list[str]) -> dict[str, BaseException | None]:
    barrier = threading.Barrier(len(writers))
    outcome: dict[str, BaseException | None] = {}

    def export(writer: str) -> None:
        try:
            with staged_dir(dest) as stage:
                _fill(stage, writer)
                barrier.wait(timeout=30)  # every writer has passed the destination check and is ready to rename
            outcome[writer] = None
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on below
            outcome[writer] = exc

    threads = [threading.Thread(target=export, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcome


def _assert_one_winner(dest: Path, outcome: dict[str, BaseException | None]) -> None:
    winners = [w for w, exc in outcome.items() if exc is None]
    losers = [exc for exc in outcome.values() if exc is not None]
    assert len(winners) == 1, outcome
    assert all(isinstance(exc, ConfigError) and "filled by someone else" in str(exc) for exc in losers), losers
    contents = {p.read_text() for p in dest.glob("part_*.txt")}
    assert contents == {winners[0]} and len(list(dest.glob("part_*.txt"))) == 20
    assert json.loads((dest / "manifest.json").read_text()) == {"writer": winners[0]}
    assert [p.name for p in dest.parent.iterdir() if ".partial-" in p.name] == []


@pytest.mark.parametrize("pre_existing", ["absent", "empty folder"])
def test_racing_exports_leave_one_complete_folder(tmp_path: Path, pre_existing: str) -> None:
    dest = tmp_path / "out"
    if pre_existing == "empty folder":
        dest.mkdir()
    outcome = _race_threads(dest, ["alpha", "beta", "gamma"])
    _assert_one_winner(dest, outcome)


def _process_export(dest: str, writer: str, barrier, results) -> None:  # runs in a spawned process
    try:
        with staged_dir(Path(dest)) as stage:
            _fill(stage, writer)
            barrier.wait(timeout=60)
        results[writer] = "ok"
    except ConfigError as exc:
        results[writer] = f"ConfigError: {exc}"


@pytest.mark.slow
def test_racing_export_processes_leave_one_complete_folder(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    dest = tmp_path / "out"
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(2), manager.dict()
        procs = [ctx.Process(target=_process_export, args=(str(dest), w, barrier, results)) for w in ("p1", "p2")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        outcome = dict(results)
    statuses = sorted(outcome.values())  # "ConfigError: ..." sorts before "ok"
    assert len(statuses) == 2 and statuses[1] == "ok", outcome
    assert statuses[0].startswith("ConfigError: output folder") and "filled by someone else" in statuses[0]
    _assert_one_winner(dest, {w: None if r == "ok" else ConfigError(r) for w, r in outcome.items()})


@pytest.mark.slow
def test_two_export_onnx_calls_to_one_out(timm_artifact: Path, tmp_path: Path, tiny_timm_folder: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real export_onnx, with the slow part faked: one verified artifact, one clear error."""
    import exporters.onnx as onnx_exporter
    from exporters.verify import verify_artifact
    from zoo.checks import VerifyReport

    barrier = threading.Barrier(2)

    def fake_build(source, stage, random_init, step, **_options):
        for item in timm_artifact.iterdir():
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, stage / item.name)
        barrier.wait(timeout=30)
        return read_manifest(stage), VerifyReport.from_dict(read_manifest(stage).verification)

    @dataclasses.dataclass
    class StandIn:  # what export_onnx reads of a Source before the faked build
        spec: Any
        task: Any = None
        module: Any = None
        processor: Any = None
        cases: list = dataclasses.field(default_factory=list)

    monkeypatch.setattr(onnx_exporter, "build_source", lambda spec, **kw: StandIn(spec))
    monkeypatch.setattr(onnx_exporter, "plan_grid", lambda task, spec, module, processor, cases, *_: cases)
    monkeypatch.setattr(onnx_exporter, "_build_artifact", fake_build)
    dest = tmp_path / "out"
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(onnx_exporter.export_onnx(str(tiny_timm_folder), out=dest))
        except Exception as exc:  # noqa: BLE001 - asserted on below
            outcome.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [o for o in outcome if isinstance(o, Exception)]
    assert len(outcome) == 2 and len(errors) == 1, outcome
    assert isinstance(errors[0], ConfigError) and "filled by someone else" in str(errors[0])
    assert verify_artifact(dest).passed


def test_publish_onto_a_filled_folder_discards_the_stage(tmp_path: Path) -> None:
    dest, stage = tmp_path / "out", tmp_path / ".out.partial-x"
    dest.mkdir()
    (dest / "theirs.txt").write_text("first")
    stage.mkdir()
    (stage / "mine.txt").write_text("second")
    with pytest.raises(ConfigError, match="filled by someone else"):
        publish(stage, dest)
    assert not stage.exists() and [p.name for p in dest.iterdir()] == ["theirs.txt"]


@pytest.mark.parametrize("where", ["through a file", "in /proc"])
def test_unwritable_destination_is_one_config_error(tmp_path: Path, where: str) -> None:
    if where == "in /proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc on this system")
    (tmp_path / "plain.txt").write_text("a regular file")
    dest = tmp_path / "plain.txt" / "out" if where == "through a file" else Path("/proc/zoo-cannot-write-here")
    with pytest.raises(ConfigError, match="choose a writable --out"), staged_dir(dest):
        pass


def test_keep_failed_never_deletes_a_user_folder(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="--keep-failed .* is not an earlier failed export"), \
            staged_dir(tmp_path / "out", keep_failed=precious):
        pass
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_keep_failed_replaces_an_earlier_failed_export(text_cls_artifact: Path, tmp_path: Path) -> None:
    earlier = copy_artifact(text_cls_artifact, tmp_path / "failed")
    manifest = _manifest(earlier)
    manifest["verified"] = False
    _write_manifest(earlier, manifest)
    with pytest.raises(RuntimeError, match="verification failed"), \
            staged_dir(tmp_path / "out", keep_failed=earlier) as stage:
        (stage / "model.onnx").write_text("the new failed graph")
        raise RuntimeError("verification failed")
    assert [p.name for p in earlier.iterdir()] == ["model.onnx"]
    assert not (tmp_path / "out").exists()
