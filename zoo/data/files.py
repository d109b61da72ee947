"""Data on disk or on the hub, read through HF ``datasets``.

    --data train.csv | data.json | data.jsonl | data.parquet   one file (its rows are the training split);
                                                               for an image model a column of image paths
                                                               (see images.py)
    --data ./images/                                           imagefolder layout: images/<label>/<file>
    --data ./saved/                                            a folder written by Dataset(Dict).save_to_disk
    --data ORG/NAME                                            a hub data set (needs the network or its cache)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import DataError, first_line

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
VAL_SPLITS = ("validation", "valid", "val", "dev", "test")


@dataclass
class RawData:
    """Splits as HF ``Dataset`` objects before any column is interpreted."""

    name: str
    splits: dict[str, Any]  # split name -> datasets.Dataset
    fingerprint: str


def load_raw(data: str, task: Any = None) -> RawData:
    """Every split of ``data`` (a file, folder, ``builtin:NAME``, hub name, or a layout ``task`` reads)."""
    if not data.startswith("builtin:") and not Path(data).expanduser().exists() and _looks_like_path(data):
        raise DataError(f"data file '{data}' does not exist; give an existing CSV/JSON/JSONL/Parquet file, "
                        "an imagefolder or save_to_disk folder, a hub data set name, or builtin:NAME")
    with _quiet_datasets():
        own = task.read_data(data) if task is not None and not data.startswith("builtin:") else None
        if own is not None:
            path = Path(data).expanduser()
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            return RawData(data, own, _hash_files(path if path.is_dir() else path.parent, files))
        if data.startswith("builtin:"):
            return _load_builtin(data, task)
        raw = _load_raw(data)
    if task is not None and task.modality == "image" and Path(data).expanduser().is_file():
        return _with_images(raw, Path(data).expanduser(), task.input_suffixes())
    return raw


def _with_images(raw: RawData, path: Path, suffixes: tuple[str, ...]) -> RawData:
    """A data file's columns of image paths read as images; its fingerprint then covers the images too."""
    from zoo.data.images import fingerprint, read_image_paths

    splits, files = {}, []
    for name, table in raw.splits.items():
        splits[name], named = read_image_paths(table, path, suffixes)
        files += named
    return RawData(raw.name, splits, fingerprint(raw.fingerprint, files) if files else raw.fingerprint)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-split progress bars: on the CLI's stderr they read like errors."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _load_builtin(data: str, task: Any) -> RawData:
    """A task's own offline set: which ones exist is the task's business (``Task.builtin_datasets``)."""
    if task is None:
        raise DataError(f"{data}: built-in data sets belong to a task; give a model so zoo knows which")
    table, digest = task.load_builtin(data.split(":", 1)[1])
    return RawData(data, dict(table), digest)


def _load_raw(data: str) -> RawData:
    path = Path(data).expanduser()
    if path.is_file():
        return RawData(data, _load_file(path), _hash_files(path.parent, [path]))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return RawData(data, _load_folder(path), _hash_files(path, files))
    return _load_hub(data)


def _looks_like_path(data: str) -> bool:
    return data.startswith(("/", "./", "../", "~")) or Path(data).suffix.lower() in FILE_BUILDERS or "\\" in data


def _load_file(path: Path) -> dict[str, Any]:
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"data file '{path}' has an unknown type '{path.suffix}'; valid: "
                        f"{', '.join(FILE_BUILDERS)} (or a folder)")
    if path.stat().st_size == 0:  # datasets reports a 0-byte file as a bare DatasetGenerationError
        raise DataError(f"data file '{path}' is empty (0 bytes); a data file holds one row per example: for CSV "
                        "a header naming the columns (e.g. text,label or image,label) and then the rows")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
    except Exception as exc:  # datasets wraps parser errors in several types
        if "corresponds to no data" in str(exc):  # what datasets says of a file with no rows
            raise DataError(f"data file '{path}' is empty (0 rows); give a file with rows") from exc
        raise DataError(f"cannot read '{path}' as {builder}: {first_line(exc, 200, named=True)}; check the file's "
                        "format") from exc
    return {"train": table}


def _load_folder(path: Path) -> dict[str, Any]:
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except Exception as exc:
        raise DataError(f"folder '{path}' is neither a save_to_disk folder nor an imagefolder "
                        f"(<folder>/<label>/<image>): {first_line(exc, 200, named=True)}") from exc
    return dict(loaded)


def _load_hub(name: str) -> RawData:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown name and auth errors all arrive here
        raise DataError(f"'{name}' is no local file or folder and could not be loaded from the hub "
                        f"({first_line(exc, 200, named=True)}); give a local file or folder, or builtin:digits "
                        "offline") from exc
    splits = dict(loaded)
    digest = hashlib.sha256("".join(s._fingerprint for s in splits.values()).encode()).hexdigest()
    return RawData(name, splits, digest)


def _hash_files(base: Path, files: list[Path]) -> str:
    """Content hash; names are taken relative to ``base`` so a moved copy keeps its fingerprint."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(base).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()

