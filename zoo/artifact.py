"""The artifact directory: file hashes, reading the manifest, and the atomic write.

No torch here: the runtime reads artifacts with this module too.

Layout of an artifact directory::

    model.onnx                      (+ model.onnx.data only past the 2 GB protobuf limit)
    manifest.json                   zoo.manifest.Manifest (typed, versioned; see that module)
    tokenizer.json, preprocess.json ...   what the task's torch-free preprocessing reads
    test_data_set_N/input_K.pb      golden data, ONNX Model Zoo layout (serialised TensorProto)
    test_data_set_N/output_K.pb
    encoder.onnx, encoder/test_data_set_N/...   an encoder-decoder's encoder graph and its golden data
                                    (``preprocess.graphs`` in the manifest; model.onnx is then the decoder)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ArtifactError, ConfigError, first_line
from zoo.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest, path_problem

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
GOLDEN_PREFIX = "test_data_set_"
_GOLDEN = re.compile(GOLDEN_PREFIX + r"\d+/(input|output)_\d+\.pb")
# The most zoo reads of one file into memory: preprocessor files (tokenizer.json of a 250k-token
# vocabulary is ~30 MB) and golden tensors (protobuf's own message limit is 2 GB).
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TENSOR_BYTES = 2 * 1024**3 - 1
MAX_TENSOR_RANK = 16
# TensorProto data types golden data may use, with their width in bytes (onnx.TensorProto enum values:
# FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, UINT32, UINT64)
_TENSOR_WIDTHS = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


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
    """The artifact's manifest, parsed and validated (every reader goes through here).

    The file is read with a size cap before ``json.loads`` and must not lead out of the folder.
    """
    if not Path(folder).is_dir():
        raise ArtifactError(f"artifact folder '{folder}' does not exist; export one with 'zoo export NAME --onnx'")
    path = artifact_path(folder, MANIFEST)
    if not path.is_file():
        raise ArtifactError(f"'{folder}' is not a zoo artifact: manifest.json is missing{_what_folder(folder)}")
    text = _read_bounded(path, MAX_MANIFEST_BYTES, f"{folder}/{MANIFEST}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ArtifactError(f"{path} is not valid JSON ({first_line(exc, 120)}); the artifact is damaged, "
                            "re-export it") from exc
    return Manifest.from_dict(data, where=str(path))


def _what_folder(folder: Path) -> str:
    """The rest of the no-manifest message: what the folder is instead, and how to get an artifact from it."""
    folder = Path(folder)
    run = next((f for f in (folder, folder.parent) if (f / "run.json").is_file()), None)
    if run is not None:
        return f"; it is a fine-tuning run (zoo finetune): export the run first with 'zoo export {run} --onnx'"
    if (folder / "config.json").is_file():
        return f"; it is a model folder: export it first with 'zoo export {folder} --onnx'"
    return " (an export that did not finish leaves no folder; re-run 'zoo export')"


# ---------------------------------------------------------------- confinement


def artifact_path(folder: Path, rel: str) -> Path:
    """The real path of manifest entry ``rel``; ArtifactError naming it unless it stays inside ``folder``.

    The text rule is ``zoo.manifest.path_problem`` (relative, normalised, no '..');
    on disk, the path with every symlink resolved, symlinked parent folders
    included, must still lie inside the folder. Every reader opens files through here.
    """
    problem = path_problem(rel)
    if problem:
        raise ArtifactError(f"{folder}: manifest entry {rel!r} {problem}; refusing to read it: re-export the "
                            "artifact")
    root = Path(folder).resolve()
    try:
        real = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ArtifactError(f"{folder}: manifest entry '{rel}' cannot be resolved ({first_line(exc, 120)}); "
                            "re-export the artifact") from exc
    if real != root and root not in real.parents:
        raise ArtifactError(f"{folder}: manifest entry '{rel}' leads out of the artifact through a symlink (to "
                            f"{real}); refusing to read it: copy the real file in, or re-export the artifact")
    return real


def read_bytes(folder: Path, rel: str, *, limit: int = MAX_FILE_BYTES, manifest: Manifest | None = None) -> bytes:
    """A confined file's bytes, at most ``limit`` of them.

    With ``manifest``, the file must be listed there and the bytes returned are
    the bytes hashed: nothing can change between the check and the parse.
    """
    path = artifact_path(folder, rel)
    if manifest is not None and rel not in manifest.files:
        raise ArtifactError(f"{folder}: {rel} is not listed in the manifest's files, so it cannot be checked; "
                            "re-export the artifact")
    if not path.is_file():
        raise ArtifactError(f"{folder}: {rel} is missing or not a regular file; re-export the artifact")
    data = _read_bounded(path, limit, f"{folder}/{rel}")
    if manifest is not None:
        entry = manifest.files[rel]
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ArtifactError(f"{folder}: {rel}: sha256 differs from the manifest (the file was modified); "
                                "re-export the artifact, or copy it again intact")
    return data


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)  # one byte more tells an oversized file apart, whatever stat claims
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} ({exc.strerror or exc}); check its permissions") from exc
    if len(data) > limit:
        raise ArtifactError(f"{what} is larger than {limit} bytes, the most zoo reads for it; the artifact is "
                            "damaged or not a zoo artifact")
    return data


# ---------------------------------------------------------------- the folder against its manifest


def check_files(folder: Path, manifest: Manifest, *, full: bool = True) -> list[str]:
    """Problems with the artifact's files: missing, wrong size, and (when ``full``) wrong sha256.

    A path that is not confined to the folder raises ArtifactError instead (see ``artifact_path``).
    """
    problems = []
    for rel, meta in manifest.files.items():
        path = artifact_path(folder, rel)
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta.size:
            problems.append(f"{rel}: size {path.stat().st_size} != {meta.size} in the manifest")
        elif full and sha256_file(path) != meta.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest (the file was modified)")
    return problems


def unlisted_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files and symlinks in the folder that the manifest does not list (symlinked folders are not entered)."""
    root = Path(folder)
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        base = Path(here).relative_to(root)
        found += [(base / name).as_posix() for name in files]
        found += [(base / name).as_posix() + "/" for name in dirs if (Path(here) / name).is_symlink()]
    return sorted(rel for rel in found if rel != MANIFEST and rel not in manifest.files)


def check_artifact(folder: Path, manifest: Manifest, *, full: bool = True, strict: bool = False) -> None:
    """Refuse (one ArtifactError) a folder that does not match its manifest, before any file is parsed.

    Paths confined, model.onnx listed, sizes of every listed file; with ``full`` also
    their sha256 and the golden tensors' headers (parsing those imports onnx: ~0.3 s of
    a cold start, which ``full=False`` skips for a trusted artifact); ``strict`` also
    refuses files the manifest does not list.
    """
    if MODEL_FILE not in manifest.files:
        raise ArtifactError(f"{folder}/{MANIFEST}: 'files' does not list {MODEL_FILE} (so it cannot be "
                            "checked); re-export the artifact with 'zoo export NAME --onnx'")
    problems = check_files(folder, manifest, full=full)
    if strict:
        problems += [f"{rel}: not in the manifest" for rel in unlisted_files(folder, manifest)]
    if problems:
        raise ArtifactError(f"artifact {folder} does not match its manifest, refusing it: " + "; ".join(problems[:6])
                            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
                            + ". Re-export it (zoo export), or copy it again intact")
    for rel in golden_files(manifest) if full else ():
        tensor_proto(folder, rel)


# ---------------------------------------------------------------- golden tensors


def golden_files(manifest: Manifest) -> list[str]:
    """The manifest's golden tensor files (``test_data_set_N/{input,output}_K.pb``)."""
    return sorted(rel for rel in manifest.files if _GOLDEN.fullmatch(rel))


def tensor_proto(folder: Path, rel: str) -> Any:
    """One serialised TensorProto, parsed from at most MAX_TENSOR_BYTES and checked before any allocation.

    Refused: external data (a path to read), segments, types with no fixed width, and
    dims whose element count differs from the data actually present in the file.
    """
    import onnx

    data = read_bytes(folder, rel, limit=MAX_TENSOR_BYTES)
    proto = onnx.TensorProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError lives in a private module
        raise ArtifactError(f"{folder}/{rel} is not a serialised TensorProto ({first_line(exc, 120)}); "
                            "re-export the artifact") from exc
    problem = _tensor_problem(proto)
    if problem:
        raise ArtifactError(f"{folder}/{rel}: {problem}; refusing to read it: re-export the artifact")
    return proto


def read_tensor(folder: Path, rel: str) -> tuple[str, np.ndarray]:
    """(name, array) of one golden tensor file, after ``tensor_proto``'s checks."""
    from onnx import numpy_helper

    proto = tensor_proto(folder, rel)
    try:
        return proto.name, numpy_helper.to_array(proto)
    except Exception as exc:  # numpy_helper raises ValueError/TypeError for malformed data
        raise ArtifactError(f"{folder}/{rel}: {first_line(exc, 120)}; re-export the artifact") from exc


def _tensor_problem(proto: Any) -> str | None:
    import onnx

    if proto.data_location == onnx.TensorProto.EXTERNAL or len(proto.external_data) or proto.HasField("segment"):
        return "the tensor points at external data or is a segment (golden data is stored inline)"
    if proto.data_type not in _TENSOR_WIDTHS:
        return f"tensor data_type {proto.data_type} is not a fixed-width numeric type"
    dims = list(proto.dims)
    if len(dims) > MAX_TENSOR_RANK or any(d < 0 for d in dims):
        return f"tensor dims {dims[:MAX_TENSOR_RANK + 1]} are not {MAX_TENSOR_RANK} or fewer sizes >= 0"
    count = math.prod(dims)  # Python ints: no overflow, however absurd the claim
    width = _TENSOR_WIDTHS[proto.data_type]
    if proto.raw_data:
        present = len(proto.raw_data)
        claimed = count * width
    else:
        present = sum(len(getattr(proto, f)) for f in _TYPED_FIELDS)
        claimed = count
    if claimed != present:
        return (f"dims {dims} claim {count} elements but the file holds data for "
                f"{present // width if proto.raw_data else present}")
    return None


def check_destination(dest: Path, option: str = "--out") -> None:
    """Refuse a destination that holds anything: an artifact folder is never merged into.

    ``option``: how the user named the destination, for the fix the messages suggest.
    """
    dest = Path(dest)
    try:
        taken = dest.exists() and (not dest.is_dir() or any(dest.iterdir()))
    except OSError as exc:
        raise ConfigError(f"output folder '{dest}' cannot be read ({exc.strerror or exc}); choose another {option}") \
            from exc
    if taken:
        raise ConfigError(f"output folder '{dest}' already exists and is not empty; choose another {option}, "
                          "or remove it")
    _probe_writable(dest, option)


def _probe_writable(dest: Path, option: str) -> None:
    """Make (and remove) a folder where ``dest``'s first missing part would go, so an unwritable --out
    (a read-only place, a path through a regular file, /proc) fails now, not after a long build."""
    parent = dest.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        probe = tempfile.mkdtemp(prefix=".zoo-probe-", dir=parent)
    except OSError as exc:
        raise ConfigError(f"cannot write the output folder '{dest}' ({exc.strerror or exc} at '{parent}'); "
                          f"choose a writable {option}") from exc
    os.rmdir(probe)


def check_keep_failed(keep: Path) -> None:
    """--keep-failed may name a new or empty folder, or an earlier failed export (which is then replaced).

    Anything else is refused before the export starts: a failed export never deletes a user's folder.
    """
    keep = Path(keep)
    if not keep.exists() or (keep.is_dir() and not any(keep.iterdir())):
        return
    try:
        replaceable = keep.is_dir() and not read_manifest(keep).verified
    except ArtifactError:
        replaceable = False
    if not replaceable:
        raise ConfigError(f"--keep-failed '{keep}' exists and is not an earlier failed export (only those are "
                          "replaced); choose another folder or remove it")


@contextlib.contextmanager
def staged_dir(dest: Path, *, keep_failed: Path | None = None, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling of ``dest``; rename it into place only if the block succeeds.

    On any exception the staging folder is removed (or moved to ``keep_failed``),
    so ``dest`` never holds a half-written artifact. The final rename is atomic and
    never merges: of two exports racing to one ``dest``, one wins, the other gets a
    ConfigError and leaves nothing behind. ``option`` names the destination in messages.
    """
    dest = Path(dest).resolve()
    check_destination(dest, option)
    if keep_failed is not None:
        check_keep_failed(keep_failed)
    stage = _make_stage(dest, option)
    try:
        yield stage
    except BaseException:
        _discard(stage, keep_failed)
        raise
    publish(stage, dest, option)


def _make_stage(dest: Path, option: str) -> Path:
    stage = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    except OSError as exc:  # read-only, /proc, a regular file on the path, no permission
        raise ConfigError(f"cannot write the output folder '{dest}' ({exc.strerror or exc}); choose a writable "
                          f"{option}") from exc
    return stage


def publish(stage: Path, dest: Path, option: str = "--out") -> None:
    """Rename the finished ``stage`` to ``dest`` in one step; ConfigError (and ``stage`` removed) if ``dest`` is taken.

    POSIX rename(2) replaces an empty folder atomically and refuses a non-empty one
    (ENOTEMPTY/EEXIST), so whoever renames second cannot mix into the first's artifact.
    """
    try:
        try:
            os.rename(stage, dest)
        except FileExistsError:
            # Windows refuses to rename onto any existing folder: an empty one is removed, then one more try
            dest.rmdir()
            os.rename(stage, dest)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) or dest.exists():
            raise ConfigError(f"output folder '{dest}' was filled by someone else (another zoo command writing to "
                              f"the same {option}?) while this one ran; this one's output was discarded: keep the "
                              f"other, or run again with another {option}") from exc
        raise ConfigError(f"cannot move the finished output to '{dest}' ({exc.strerror or exc}); choose a "
                          f"writable {option}") from exc


def _discard(stage: Path, keep_failed: Path | None) -> None:
    if keep_failed is None:
        shutil.rmtree(stage, ignore_errors=True)
        return
    keep = Path(keep_failed)
    try:
        if keep.exists():
            shutil.rmtree(keep)  # an earlier failed export: check_keep_failed made sure
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(keep))
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)  # the export's own error matters more than the debug copy
