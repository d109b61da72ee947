"""The artifact directory: file hashes, reading the manifest, and the atomic write.

No torch here: the runtime reads artifacts with this module too.

Layout of an artifact directory::

    model.onnx                      (+ model.onnx.data only past the 2 GB protobuf limit)
    manifest.json                   zoo.manifest.Manifest (typed, versioned; see that module)
    tokenizer.json, preprocess.json ...   what the task's torch-free preprocessing reads
    test_data_set_N/input_K.pb      golden data, ONNX Model Zoo layout (serialised TensorProto)
    test_data_set_N/output_K.pb
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
from zoo.manifest import FileEntry, Manifest

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under ``folder`` except the manifest, keyed by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): FileEntry(sha256_file(p), p.stat().st_size) for p in files}


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Hash every file, then write manifest.json (always the last file written)."""
    manifest = manifest.replace(files=hash_files(folder))
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """The artifact's manifest, parsed and validated (every reader goes through here)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ArtifactError(f"artifact folder '{folder}' does not exist; export one with 'zoo export NAME --onnx'")
    if not path.is_file():
        raise ArtifactError(f"'{folder}' is not a zoo artifact: manifest.json is missing "
                            "(an export that did not finish leaves no folder; re-run 'zoo export')")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is damaged, re-export it") from exc
    return Manifest.from_dict(data, where=str(path))


def check_files(folder: Path, manifest: Manifest, *, full: bool = True) -> list[str]:
    """Problems with the artifact's files: missing, wrong size, and (when ``full``) wrong sha256."""
    problems = []
    for rel, meta in manifest.files.items():
        path = Path(folder) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta.size:
            problems.append(f"{rel}: size {path.stat().st_size} != {meta.size} in the manifest")
        elif full and sha256_file(path) != meta.sha256:
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
