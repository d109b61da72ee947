"""Image paths in a data file (CSV/TSV/JSON/JSONL/Parquet) read as HF ``Image`` columns.

    image,label
    photos/cat1.png,cat          relative paths are taken from the data file's folder
    /data/dogs/dog7.jpg,dog      absolute paths are kept

A column of strings is read as image paths when at least half of its non-empty
cells end in a suffix Pillow opens (a caption that mentions ``photo.jpg`` does
not turn a text column into images; one misspelt path does not turn an image
column into text). Every path is checked when the file is read, so a missing or
unreadable image is named by its row before any model is built. Fine-tuning
(``zoo finetune --data``) and ``zoo optimize --eval-data`` both read data files
through here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from zoo.errors import DataError, first_line

NEEDS = ("an image model needs a column of image files: a CSV/JSON column of image paths (PNG, JPEG, ...; "
         "relative paths are taken from the data file's folder), an imagefolder (<folder>/<label>/<image>) "
         "or builtin:digits")


def read_image_paths(table: Any, source: Path, suffixes: tuple[str, ...]) -> tuple[Any, list[Path]]:
    """(``table`` with its image-path columns cast to ``datasets.Image``, every image file it names)."""
    import datasets

    features, data, files = table.features.copy(), {}, []
    for name, feature in table.features.items():
        cells = list(table[name])
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
                and _names_images(cells, suffixes)):
            continue
        paths = [_checked(source, row, name, cell, suffixes) for row, cell in enumerate(cells)]
        features[name], data[name] = datasets.Image(), [str(p) for p in paths]
        files += paths
    if not data:
        return table, []
    columns = {name: data.get(name) or list(table[name]) for name in table.column_names}
    return datasets.Dataset.from_dict(columns, features=features), files


def fingerprint(table_digest: str, files: list[Path]) -> str:
    """The data file's digest extended by the bytes of every image it names, in row order."""
    digest = hashlib.sha256(table_digest.encode())
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def decoded_images(table: Any, column: str, what: str) -> list[Any]:
    """The PIL images of ``column``; text instead of images, or an image that fails to decode, is a DataError."""
    import datasets

    feature = table.features[column]
    if not isinstance(feature, datasets.Image):
        sample = next((str(v) for v in table[column] if v is not None), "")
        raise DataError(f"column '{column}' of the {what} data holds {_kind(feature)}, not images "
                        f"(e.g. '{sample[:60]}'); {NEEDS}; name that column with --text-column")
    undecoded = table.cast_column(column, datasets.Image(decode=False))[column]
    return [_decode(feature, item, row, what) for row, item in enumerate(undecoded)]


def _names_images(cells: list[Any], suffixes: tuple[str, ...]) -> bool:
    filled = [c for c in cells if isinstance(c, str) and c.strip()]
    hits = sum(1 for c in filled if "\n" not in c and Path(c.strip()).suffix.lower() in suffixes)
    return bool(filled) and 2 * hits >= len(filled)


def _checked(source: Path, row: int, column: str, cell: Any, suffixes: tuple[str, ...]) -> Path:
    """The cell's image file, resolved against the data file's folder, known to exist and to open."""
    from PIL import Image

    where = f"data file '{source}', row {row + 1}, column '{column}'"
    text = (cell or "").strip()
    if not text:
        raise DataError(f"{where}: no image path; give every row an image file, or remove the row")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else (source.parent / path).resolve()
    if path.suffix.lower() not in suffixes:
        raise DataError(f"{where}: '{text}' is not an image file name (Pillow opens {', '.join(suffixes[:8])}, ...); "
                        "fix the path or remove the row")
    if not path.is_file():
        raise DataError(f"{where}: image '{text}' does not exist (looked for {path}; relative paths are taken "
                        "from the data file's folder); fix the path or remove the row")
    try:
        Image.open(path).close()  # the header only; pixels are decoded once, when the data is encoded
    except Exception as exc:  # UnidentifiedImageError (an OSError); header parsers also raise ValueError ...
        raise DataError(f"{where}: '{text}' is not an image Pillow can read ({first_line(exc, 120)}); replace the "
                        "file or remove the row") from exc
    return path


def _decode(feature: Any, item: dict[str, Any], row: int, what: str) -> Any:
    try:
        return feature.decode_example(item)
    except Exception as exc:  # truncated or corrupt pixel data surfaces only here, in Pillow's decoders
        name = item.get("path") or f"row {row + 1}"
        raise DataError(f"image '{name}' of the {what} data cannot be decoded ({type(exc).__name__}: "
                        f"{first_line(exc, 120)}); replace the file or remove the row") from exc


def _kind(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    return "text" if dtype in ("string", "large_string") else f"values of type {dtype or type(feature).__name__}"
