"""Many inputs in, many results out: what ``zoo predict`` reads and writes, without torch.

    zoo predict artifacts/resnet photos/ 'shots/*.jpg' @more.txt
    find photos -name '*.png' | zoo predict artifacts/resnet - --out preds.csv
    zoo predict artifacts/sst2 @reviews.txt --batch-size 64 --out preds.jsonl

Every argument is one input, except that ``-`` reads one input per line from stdin
and ``@FILE`` one per line from FILE; for a task that reads files (images), a
directory stands for the files in it (recursively) that the task can open, and a
glob pattern for the files it matches. A text argument is never expanded: a
review that contains ``*`` stays itself, and ``@name`` stays text unless the file
``name`` exists.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from typing import IO, Any

from zoo.errors import ConfigError, InputError

RESULT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def gather_inputs(args: list[str], suffixes: tuple[str, ...], stdin: IO[str] | None = None) -> list[str]:
    """The inputs named by ``args`` in order (see the module docstring); ``suffixes`` empty for text tasks."""
    items: list[str] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise InputError("'-' reads inputs from stdin, but there is no stdin here")
            items += _lines(stdin.read())
        elif arg.startswith("@") and len(arg) > 1 and (suffixes or Path(arg[1:]).expanduser().is_file()):
            items += _list_file(arg)
        elif suffixes:
            items += _files(arg, suffixes)
        else:
            items.append(arg)
    if not items:
        raise InputError(f"no inputs in {' '.join(args) or 'the arguments'}; give texts or files, @FILE (one "
                         "input per line) or - (one per line on stdin)")
    return items


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _list_file(arg: str) -> list[str]:
    path = Path(arg[1:]).expanduser()
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "missing"
        raise InputError(f"{arg}: the list file '{arg[1:]}' is {kind}; @FILE names a text file with one input per line")
    return _lines(path.read_text())


def _files(arg: str, suffixes: tuple[str, ...]) -> list[str]:
    path = Path(arg).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise InputError(f"directory '{arg}' holds no files this model reads ({', '.join(suffixes[:8])}, ...)")
        return found
    if glob.has_magic(arg) and not path.exists():
        matches = sorted(m for m in glob.glob(os.path.expanduser(arg), recursive=True) if Path(m).is_file())
        if not matches:
            raise InputError(f"pattern '{arg}' matches no files")
        return matches
    return [arg]  # a missing file or a URL is reported, in the user's spelling, by the preprocessor


class ResultWriter:
    """Results to a file as they come: JSON lines (.jsonl, .ndjson) or CSV (.csv), one row per input."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.format = RESULT_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise ConfigError(f"--out {path}: unknown result format '{self.path.suffix}'; name the file .jsonl "
                              "(JSON lines), .ndjson or .csv")
        if self.path.is_dir():
            raise ConfigError(f"--out {path} is a directory; give a file name ending in .jsonl or .csv")
        self.rows = 0
        self._file: IO[str] | None = None
        self._csv: Any = None

    def __enter__(self) -> ResultWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="" if self.format == "csv" else None, encoding="utf-8")
        return self

    def write(self, inputs: list[Any], results: list[Any]) -> None:
        assert self._file is not None, "use ResultWriter as a context manager"
        for item, result in zip(inputs, results):
            row = {"input": str(item), **result.to_dict()}
            if self.format == "jsonl":
                self._file.write(json.dumps(row) + "\n")
            else:
                self._write_csv({k: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)
                                 for k, v in row.items()})
            self.rows += 1

    def _write_csv(self, row: dict[str, Any]) -> None:
        if self._csv is None:  # the first row fixes the columns; every result of one task has the same keys
            self._csv = csv.DictWriter(self._file, fieldnames=list(row))
            self._csv.writeheader()
        self._csv.writerow(row)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
