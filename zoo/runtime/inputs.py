"""Many inputs in, many results out: what ``zoo predict`` reads and writes, without torch.

    zoo predict artifacts/resnet photos/ 'shots/*.jpg' @more.txt
    find photos -name '*.png' | zoo predict artifacts/resnet - --out preds.csv
    zoo predict artifacts/sst2 @reviews.txt --batch-size 64 --out preds.jsonl
    zoo predict artifacts/sst2 --text "@united lost my bag" -     # --text: every argument is the text itself

Every argument is one input, except that ``-`` reads one input per line from stdin
and ``@FILE`` one per line from FILE (which must exist, for every task); for a task
that reads files (images, audio), a directory stands for the files in it
(recursively) that the task can open, and a glob pattern for the files it matches.
A text model never expands an argument, and refuses one that names an existing file
or directory (meant as a file, it would be embedded or classified as its own name);
``--text`` takes every argument as text as it stands. The Python API and ``zoo
serve`` never look at the file system for a text input: a string is the text.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from zoo.errors import ConfigError, InputError, ZooWarning

if TYPE_CHECKING:  # pragma: no cover
    from zoo.tasks.base import Task

RESULT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def gather_inputs(args: list[str], task: Task, stdin: IO[str] | None = None, *, literal: bool = False) -> list[str]:
    """The inputs named by ``args`` in order (see the module docstring); ``literal``: ``--text``."""
    suffixes = task.input_suffixes()  # empty: the task's inputs are the arguments themselves (text)
    if literal and suffixes:
        raise ConfigError(f"--text takes every input as text, but this {task.name} model reads {task.expects}; "
                          "leave --text out and give files, directories, globs, @FILE or -")
    items: list[str] = []
    for arg in args:
        if literal:
            items.append(arg)
        elif arg == "-":
            if stdin is None:
                raise InputError("'-' reads inputs from stdin, but there is no stdin here")
            items += _lines(stdin.read())
        elif arg.startswith("@") and len(arg) > 1:
            items += _list_file(arg, text=not suffixes)
        elif suffixes:
            items += _files(arg, suffixes)
        else:
            items.append(_text(arg, task))
    if not items:
        raise InputError(f"no inputs in {' '.join(args) or 'the arguments'}; give texts or files, @FILE (one "
                         "input per line) or - (one per line on stdin)")
    return items


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _list_file(arg: str, text: bool) -> list[str]:
    path = Path(arg[1:]).expanduser()
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "missing"
        literally = f"; to take '{arg}' itself as text, add --text" if text else ""
        raise InputError(f"{arg}: the list file '{arg[1:]}' is {kind}; @FILE names a text file with one input "
                         f"per line{literally}")
    return _lines(path.read_text())


def _text(arg: str, task: Task) -> str:
    """A text model's argument, refused when it names a file or folder: that was meant as a file, not as text."""
    kind = _path_kind(arg)
    if kind is not None:
        raise InputError(f"'{arg}' is a {kind}, but this {task.name} model reads text: give the text itself, @FILE "
                         f"to read texts from a file (one per line), or --text to take '{arg}' as text")
    if _looks_like_media(arg):
        warnings.warn(f"'{arg}' is not a file here, so it is taken as text; this {task.name} model reads text, "
                      "not files (--text takes every argument as text without this check)", ZooWarning, stacklevel=3)
    return arg


def _path_kind(arg: str) -> str | None:
    try:
        path = Path(arg).expanduser()
        return "directory" if path.is_dir() else "file" if path.exists() else None
    except (OSError, ValueError, RuntimeError):  # too long for a file name, a NUL byte, ~nosuchuser: text
        return None


def _looks_like_media(arg: str) -> bool:
    """One word ending as the files other tasks read (.png, .wav ...): likely a mistyped path."""
    from zoo.tasks import all_tasks

    if not arg or any(c.isspace() for c in arg):
        return False
    suffix = Path(arg).suffix.lower()
    return bool(suffix) and any(suffix in t.input_suffixes() for t in all_tasks())


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
