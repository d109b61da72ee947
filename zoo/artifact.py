"""The artifact directory: manifest schema, file hashes and the atomic write.

No torch here: the runtime reads artifacts with this module too.

Layout of an artifact directory::

    model.onnx                      (+ model.onnx.data only past the 2 GB protobuf limit)
    manifest.json                   see MANIFEST_KEYS below
    tokenizer.json, ...             text models: what ``tokenizers`` needs, no transformers
    test_data_set_N/input_K.pb      golden data, ONNX Model Zoo layout (serialised TensorProto)
    test_data_set_N/output_K.pb

``manifest.json`` keys:

    format          "zoo-artifact"          format_version  1
    name            model name as given     spec            ModelSpec.to_dict() (task, labels, preprocess, ...)
    source          {"source", "id", "revision"}
    task, labels    copied from spec for readers that want only these
    inputs          [{"name", "dtype", "shape"}]  (a string in shape names a dynamic axis)
    outputs         [{"name", "dtype", "shape"}]
    opset, exporter ("dynamo" | "torchscript")
    export_notes    why the TorchScript fallback was needed (empty when dynamo succeeded)
    random_init     true when exported from random weights (--random-init): nothing to verify against later
    verified        true only for an artifact that passed; a --keep-failed folder says false
    preprocess      Preprocess as a dict (image: input_size/mean/std/interpolation/crop_pct/crop_mode;
                    text: max_length, pooling, normalize) plus "files": [preprocessor file names].
                    Text also records how ``tokenizers`` alone reproduces the model's tokenizer:
                    truncation (true), truncation_side, padding ("longest"), padding_side,
                    pad_token, pad_token_id, pad_type_id. Images also get the same fields as
                    ``preprocess.json`` in the artifact.
    versions        {"zoo", "torch", "transformers", "timm", "onnx", "onnxruntime", "onnxscript", "numpy"}
    files           {relative path: {"sha256", "size"}} for every file but manifest.json
    verification    the verification report (VerifyReport.to_dict())
    tolerances      {"atol", "rtol", "cosine"}
    model_kwargs    optional: constructor overrides the model was built with (e.g. a shrunken test model)
    run             for a fine-tuned model: run.json's summary (base, data fingerprint, config, metrics)
    created         ISO-8601 UTC time
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.errors import ArtifactError

FORMAT = "zoo-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` except the manifest, keyed by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file, then write manifest.json (always the last file written)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    manifest["files"] = hash_files(folder)
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ArtifactError(f"artifact folder '{folder}' does not exist; export one with 'zoo export NAME --onnx'")
    if not path.is_file():
        raise ArtifactError(f"'{folder}' is not a zoo artifact: manifest.json is missing "
                            "(an export that did not finish leaves no folder; re-run 'zoo export')")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is damaged, re-export it") from exc
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a zoo manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {manifest['format_version']}; this zoo reads up to "
                            f"{FORMAT_VERSION}: upgrade zoo-toolkit")
    return manifest


def check_files(folder: Path, manifest: dict[str, Any], *, full: bool = True) -> list[str]:
    """Problems with the artifact's files: missing, wrong size, and (when ``full``) wrong sha256."""
    problems = []
    for rel, meta in manifest.get("files", {}).items():
        path = Path(folder) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta["size"]:
            problems.append(f"{rel}: size {path.stat().st_size} != {meta['size']} in the manifest")
        elif full and sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (the file was modified)")
    return problems


def check_destination(dest: Path) -> None:
    """Refuse a destination that holds anything: an artifact folder is never merged into."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        from zoo.errors import ConfigError

        raise ConfigError(f"output folder '{dest}' already exists and is not empty; choose another --out "
                          "or remove it")


@contextlib.contextmanager
def staged_dir(dest: Path, *, keep_failed: Path | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest``; rename it into place only if the block succeeds.

    On any exception the staging folder is removed (or moved to ``keep_failed``),
    so ``dest`` never holds a half-written artifact.
    """
    dest = Path(dest).resolve()
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        if keep_failed is not None:
            keep_failed = Path(keep_failed)
            if keep_failed.exists():
                shutil.rmtree(keep_failed)
            keep_failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(stage), str(keep_failed))
        else:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if dest.exists():
        dest.rmdir()
    os.replace(stage, dest)
