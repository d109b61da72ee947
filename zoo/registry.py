"""Read, merge and validate registry files; turn names into ``ModelSpec``s.

Order of precedence (later wins, field by field): the curated ``registry.yaml``
shipped with zoo, files in ``$ZOO_REGISTRY`` (separated by ``os.pathsep``), then
files passed with ``--registry``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import NameNotFoundError, RegistryError
from zoo.spec import (
    DTYPES,
    POOLINGS,
    SOURCES,
    TASKS,
    ExportSettings,
    ModelSpec,
    Preprocess,
    Tolerances,
)

ENV_VAR = "ZOO_REGISTRY"
_ENTRY_KEYS = {
    "source", "id", "revision", "task", "arch", "inputs", "preprocess",
    "export", "verify", "labels", "description", "trust_remote_code",
}
_REQUIRED = ("source", "id", "task")
_SECTIONS = {
    "preprocess": {f.name for f in dataclasses.fields(Preprocess)},
    "export": {f.name for f in dataclasses.fields(ExportSettings)},
    "verify": {f.name for f in dataclasses.fields(Tolerances)},
}


def curated_registry_path() -> Path:
    """The shipped registry: inside the wheel, or at the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "registry.yaml", here.parent / "registry.yaml"):
        if candidate.is_file():
            return candidate
    raise RegistryError([f"the curated registry.yaml is missing next to {here}; reinstall zoo-toolkit"])


def registry_files(extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    files = [curated_registry_path()]
    env = os.environ.get(ENV_VAR, "")
    files += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    files += [Path(p) for p in extra]
    return files


class Registry:
    """The merged view of several registry files."""

    def __init__(self, entries: dict[str, ModelSpec], files: list[Path]):
        self.entries = entries
        self.files = files

    def __contains__(self, alias: str) -> bool:
        return alias in self.entries

    def get(self, alias: str) -> ModelSpec:
        return self.entries[alias]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def suggest(self, name: str, n: int = 3) -> list[str]:
        lowered = {a.lower(): a for a in self.entries}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
        hits += [a for a in lowered if name.lower() in a and a not in hits][: n - len(hits)]
        return [lowered[h] for h in hits]


def load_registry(extra: list[str] | tuple[str, ...] = ()) -> Registry:
    """Merge the curated registry with user files; raise one error listing every problem."""
    files = registry_files(extra)
    return _load_cached(tuple(str(f) for f in files), tuple(_mtime(f) for f in files))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


@lru_cache(maxsize=8)
def _load_cached(files: tuple[str, ...], _mtimes: tuple[float, ...]) -> Registry:
    problems: list[str] = []
    raw: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for file in files:
        for alias, entry, loc in _read_file(Path(file), problems):
            if alias in raw and isinstance(entry, dict):
                raw[alias] = _deep_merge(raw[alias], entry)
            else:
                raw[alias] = entry
            where[alias] = loc
    entries: dict[str, ModelSpec] = {}
    for alias, entry in raw.items():
        errs = validate_entry(entry)
        problems += [f"{where[alias]}: entry '{alias}': {e}" for e in errs]
        if not errs:
            entries[alias] = entry_to_spec(alias, entry)
    if problems:
        raise RegistryError(problems)
    return Registry(entries, [Path(f) for f in files])


def _read_file(path: Path, problems: list[str]) -> list[tuple[str, Any, str]]:
    """(alias, entry, 'file:line') for every entry of one file."""
    try:
        text = path.read_text()
    except OSError as exc:
        problems.append(f"{path}: cannot read registry file ({exc.strerror}); check the path given "
                        f"with --registry or ${ENV_VAR}")
        return []
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{path}{line}: not valid YAML ({problem})")
        return []
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        problems.append(f"{path}: a registry file is a mapping with a 'models:' mapping of alias -> entry")
        return []
    lines = _entry_lines(node)
    return [(str(alias), entry, f"{path}:{lines.get(str(alias), 1)}") for alias, entry in data["models"].items()]


def _entry_lines(node: Any) -> dict[str, int]:
    for key, value in getattr(node, "value", []):
        if getattr(key, "value", None) == "models" and isinstance(value, yaml.MappingNode):
            return {k.value: k.start_mark.line + 1 for k, _ in value.value}
    return {}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate_entry(entry: Any) -> list[str]:
    """Every problem with one entry, as 'field: what is wrong (what is valid)'."""
    if not isinstance(entry, dict):
        return ["an entry is a mapping with at least source, id and task"]
    errs = [f"missing field '{k}'" for k in _REQUIRED if k not in entry]
    for key in entry:
        if key not in _ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), sorted(_ENTRY_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(_ENTRY_KEYS))})"
            errs.append(f"unknown field '{key}'{hint}")
    if "source" in entry and entry["source"] not in SOURCES:
        errs.append(f"source: '{entry['source']}' is not one of {', '.join(SOURCES)}")
    if "id" in entry and (not isinstance(entry["id"], str) or not entry["id"].strip()):
        errs.append("id: must be a non-empty string such as 'resnet50.a1_in1k' or 'google-bert/bert-base-uncased'")
    if "task" in entry and entry["task"] not in TASKS:
        close = difflib.get_close_matches(str(entry["task"]), TASKS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        errs.append(f"task: '{entry['task']}' is not one of {', '.join(TASKS)}{hint}")
    errs += _validate_inputs(entry.get("inputs", []))
    errs += _validate_plain_fields(entry)
    for section, allowed in _SECTIONS.items():
        errs += _validate_section(section, entry.get(section, {}), allowed)
    return errs


def _validate_plain_fields(entry: dict[str, Any]) -> list[str]:
    """Types of the fields that are copied into the spec as they are (a wrong type would fail there, untyped)."""
    errs = []
    for key in ("revision", "arch", "description"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            errs.append(f"{key}: must be a string, got {entry[key]!r}")
    if "trust_remote_code" in entry and not isinstance(entry["trust_remote_code"], bool):
        errs.append(f"trust_remote_code: must be true or false, got {entry['trust_remote_code']!r}")
    labels = entry.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, (str, int)) for x in labels)):
        errs.append("labels: must be a list of class names")
    return errs


def _validate_inputs(inputs: Any) -> list[str]:
    if not isinstance(inputs, list):
        return ["inputs: must be a list of {name, dtype, shape}"]
    errs = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            errs.append(f"inputs[{i}]: needs a string 'name'")
            continue
        if item.get("dtype", "int64") not in DTYPES:
            errs.append(f"inputs[{i}].dtype: '{item.get('dtype')}' is not one of {', '.join(DTYPES)}")
        shape = item.get("shape", [])
        if not isinstance(shape, list) or not all(isinstance(d, (int, str)) for d in shape):
            errs.append(f"inputs[{i}].shape: must be a list of ints and axis names, e.g. [batch, sequence]")
    return errs


def _validate_section(section: str, values: Any, allowed: set[str]) -> list[str]:
    if not isinstance(values, dict):
        return [f"{section}: must be a mapping"]
    errs = []
    for key, value in values.items():
        if key not in allowed:
            errs.append(f"{section}.{key}: unknown field (valid: {', '.join(sorted(allowed))})")
        elif key in ("atol", "rtol") and (not isinstance(value, (int, float)) or value < 0):
            errs.append(f"{section}.{key}: must be a number >= 0, got {value!r}")
        elif key == "cosine" and (not isinstance(value, (int, float)) or not 0 < value <= 1):
            errs.append(f"{section}.cosine: must be in (0, 1], got {value!r}")
        elif key == "opset" and (not isinstance(value, int) or not 7 <= value <= 23):
            errs.append(f"{section}.opset: must be an integer from 7 to 23, got {value!r}")
        elif key == "pooling" and value is not None and value not in POOLINGS:
            errs.append(f"{section}.pooling: '{value}' is not one of {', '.join(POOLINGS)}")
        elif key in ("max_length",) and not _is_count(value):
            errs.append(f"{section}.{key}: must be a positive integer, got {value!r}")
        elif key == "input_size" and (not isinstance(value, list) or len(value) != 3
                                      or not all(_is_count(v) for v in value)):
            errs.append(f"{section}.input_size: must be [channels, height, width] of positive integers, got {value!r}")
        else:
            errs += _validate_image_field(section, key, value)
    return errs


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_image_field(section: str, key: str, value: Any) -> list[str]:
    from zoo.manifest import CROP_MODES, INTERPOLATIONS

    if key in ("mean", "std") and (not isinstance(value, list) or not all(_is_number(v) for v in value)):
        return [f"{section}.{key}: must be a list of numbers (one per channel), got {value!r}"]
    if key == "crop_pct" and value is not None and (not _is_number(value) or not 0 < value <= 1):
        return [f"{section}.crop_pct: must be a number in (0, 1], got {value!r}"]
    if key == "interpolation" and value is not None and value not in INTERPOLATIONS:
        return [f"{section}.interpolation: '{value}' is not one of {', '.join(INTERPOLATIONS)}"]
    if key == "crop_mode" and value is not None and value not in CROP_MODES:
        return [f"{section}.crop_mode: '{value}' is not one of {', '.join(CROP_MODES)}"]
    if key == "normalize" and not isinstance(value, bool):
        return [f"{section}.normalize: must be true or false, got {value!r}"]
    return []


def entry_to_spec(alias: str, entry: dict[str, Any]) -> ModelSpec:
    data = {
        "name": alias,
        "source": entry["source"],
        "source_id": entry["id"],
        "task": entry["task"],
        "arch": entry.get("arch", ""),
        "revision": entry.get("revision"),
        "inputs": entry.get("inputs", []),
        "preprocess": entry.get("preprocess", {}),
        "export": entry.get("export", {}),
        "verify": entry.get("verify", {}),
        "labels": entry.get("labels"),
        "description": entry.get("description", ""),
        "trust_remote_code": bool(entry.get("trust_remote_code", False)),
    }
    return ModelSpec.from_dict(data)


def spec_to_entry(spec: ModelSpec) -> dict[str, Any]:
    """The inverse of ``entry_to_spec``: a dict that ``yaml.safe_dump`` writes as an entry."""
    d = spec.to_dict()
    entry = {"source": d["source"], "id": d["source_id"], "task": d["task"], "arch": d["arch"],
             "inputs": d["inputs"], "preprocess": d["preprocess"], "export": d["export"],
             "verify": d["verify"], "description": d["description"]}
    for key in ("revision", "labels"):
        if d[key] is not None:
            entry[key] = d[key]
    if d["trust_remote_code"]:
        entry["trust_remote_code"] = True
    return entry


def unknown_name(name: str, registry: Registry) -> NameNotFoundError:
    close = registry.suggest(name)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    if "/" in name and not name.startswith(("hf:", "timm:")):
        hint += f"For a Hugging Face model write 'hf:{name}'; for a folder check the path exists. "
    return NameNotFoundError(
        f"unknown model '{name}': not a registry alias, 'hf:ORG/NAME', 'timm:ARCH' or an existing folder. "
        f"{hint}Run 'zoo list' to see the aliases."
    )
