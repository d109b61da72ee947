"""``manifest.json`` as one typed, versioned dataclass: the only place it is parsed and written.

No torch here: the runtime, ``zoo verify``, ``zoo optimize`` and ``zoo serve`` all read
manifests through ``Manifest.from_dict`` (via ``zoo.artifact.read_manifest``), which treats
the file as untrusted input: unknown keys, wrong types, missing fields and a
``format_version`` from the future are each refused in one line naming the field.

Every path the manifest names (``files`` keys, ``preprocess.files``) must be a
relative, normalised POSIX path inside the artifact (``path_problem`` is the rule;
``zoo.artifact.artifact_path`` adds the symlink check on disk), and every
preprocessed file must also be hashed in ``files``. Preprocessing numbers that
size an allocation (``input_size``, ``max_length``, ``crop_pct``) are bounded.

Fields (format_version 1):

    format, format_version   "zoo-artifact", 1
    name                     model name as given to the exporter
    spec                     ModelSpec.to_dict() (task, labels, inputs, preprocess, tolerances, ...)
    source                   {"source", "id", "revision"}
    task, labels             copied from spec for readers that want only these
    inputs, outputs          [{"name", "dtype", "shape"}] in graph order (a string in shape names a dynamic axis)
    opset, exporter          ONNX opset; "dynamo" | "torchscript"
    export_notes             what was tried before the kept graph (empty when the first exporter passed)
    random_init, seed        exported from random weights (and the seed that made them)
    verified                 true only for an artifact that passed; a --keep-failed folder says false
    preprocess               the task's preprocessing record plus "files" (preprocessor file names)
    tolerances               {"atol", "rtol", "cosine", "rule", "scale"} the verified limits; "widened" says why
                             rtol is above the requested one (a measured float32 noise floor)
    versions                 library versions at export time
    files                    {relative path: {"sha256", "size"}} of every file but manifest.json
    verification             the verification report (VerifyReport.to_dict()); its "memory" holds the memory
                             budget and, per grid case, the estimate and the measured peak resident memory (MiB)
    created                  ISO-8601 UTC time
    model_kwargs             optional: constructor overrides (e.g. a shrunken test model)
    run                      optional: a fine-tuned model's run.json summary
    optimization             optional: an optimised artifact's parent, recipe and gates
    engine                   optional: {"name": onnxruntime | openvino, "precision": f32 | bf16}, the engine setting
                             the artifact was verified (and its golden data written) under; absent: onnxruntime
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import ArtifactError, ConfigError

FORMAT = "zoo-artifact"
FORMAT_VERSION = 1
# Bounds on what a manifest may claim, so that a forged one cannot size an allocation.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024  # a real one is a few KB (labels of a 22k-class model: ~1 MB)
MAX_PATH_CHARS = 1024
MAX_IMAGE_SIDE = 8192  # input_size height/width, and the resize before the crop
MAX_SEQUENCE = 1 << 20  # preprocess.max_length, in tokens
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border", "center-floor")  # center-floor: transformers' centre crop
SIDES = ("left", "right")


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, numpy dtype name, shape (a string names a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    spec: dict[str, Any]
    source: dict[str, Any]
    task: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    opset: int
    exporter: str
    preprocess: dict[str, Any]
    tolerances: dict[str, Any]
    versions: dict[str, Any]
    verified: bool
    verification: dict[str, Any]
    created: str
    export_notes: tuple[str, ...] = ()
    random_init: bool = False
    seed: int | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    model_kwargs: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    optimization: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------ derived views

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def model_spec(self) -> Any:
        from zoo.spec import ModelSpec

        try:
            return ModelSpec.from_dict(self.spec)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"manifest.json: field 'spec' is not a model spec ({exc}); re-export the "
                                "artifact with 'zoo export'") from exc

    def source_spec(self) -> Any:
        """The spec that rebuilds the torch source (``zoo verify --against-source``, ``zoo bench --vs-torch``).

        An artifact is untrusted input: it must not choose to run a repository's own code on
        this machine, so a spec asking for ``trust_remote_code`` is refused here.
        """
        spec = self.model_spec()
        if spec.trust_remote_code:
            raise ConfigError(f"the artifact's manifest asks for trust_remote_code to rebuild {spec.source_name}; "
                              "zoo never runs code an artifact names: export the source yourself and compare "
                              "with that artifact")
        return spec

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "format_version": self.format_version}
        for f in dataclasses.fields(self):
            if f.name in ("format", "format_version"):
                continue
            value = getattr(self, f.name)
            if f.name in _OPTIONAL and value is None:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> Manifest:
        """Parse untrusted JSON; raise ArtifactError naming the first field that is wrong."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}; re-export the artifact")
        _check_format(data, where)
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise ArtifactError(f"{where}: unknown field '{unknown[0]}' (valid: {', '.join(sorted(_FIELDS))}); "
                                "the file was edited or written by another tool: re-export the artifact")
        missing = [f for f in _REQUIRED if f not in data]
        if missing:
            raise ArtifactError(f"{where}: missing field '{missing[0]}'; the artifact is incomplete, re-export it")
        values = {name: _parse(name, data[name], where) for name in data}
        unhashed = [f for f in values["preprocess"].get("files", []) if f not in values.get("files", {})]
        if unhashed:
            raise ArtifactError(f"{where}: preprocess.files names '{unhashed[0]}', which 'files' does not hash; "
                                "every file the runtime reads must be listed with its sha256: re-export it")
        return cls(**values)


# ---------------------------------------------------------------- field checks

# How verification applies rtol: to the largest |torch| of each output row, or to each element (numpy allclose)
TOLERANCE_RULES = ("row-scale", "allclose")
# The engines an artifact may name (zoo.runtime.engines) and the precisions OpenVINO computes in
ENGINES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")

_OPTIONAL = {"model_kwargs", "run", "optimization", "seed", "engine"}
_FIELDS = {f.name for f in dataclasses.fields(Manifest)}
_REQUIRED = [f.name for f in dataclasses.fields(Manifest)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
_DICTS = {"spec", "source", "preprocess", "tolerances", "versions", "verification"}
_OPTIONAL_DICTS = {"model_kwargs", "run", "optimization", "engine"}
_STRINGS = {"name", "task", "exporter", "created", "format"}


def _check_format(data: dict[str, Any], where: str) -> None:
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{where} is not a zoo manifest (format={data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{where}: format_version {version!r} is not a positive integer; re-export the artifact")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{where} has format_version {version}; this zoo reads up to {FORMAT_VERSION}: "
                            "upgrade zoo-toolkit (pip install -U zoo-toolkit)")


def _parse(name: str, value: Any, where: str) -> Any:
    def wrong(expected: str) -> ArtifactError:
        return ArtifactError(f"{where}: field '{name}' must be {expected}, got {_show(value)}; re-export the artifact")

    if name in _STRINGS:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if name in _DICTS or name in _OPTIONAL_DICTS:
        if value is None and name in _OPTIONAL_DICTS:
            return None
        if not isinstance(value, dict):
            raise wrong("a JSON object")
        if name == "preprocess":
            _check_preprocess(value, where)
        elif name == "tolerances":
            _check_tolerances(value, where)
        elif name == "engine":
            _check_engine(value, where)
        return value
    if name in ("verified", "random_init"):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if name in ("opset", "format_version", "seed"):
        if value is None and name == "seed":
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
        return value
    if name == "labels":
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings or null")
        return tuple(value)
    if name == "export_notes":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    if name in ("inputs", "outputs"):
        return _tensors(name, value, where)
    if name == "files":
        return _files(value, where)
    raise wrong("absent")  # pragma: no cover - every field is handled above


def _tensors(name: str, value: Any, where: str) -> tuple[TensorInfo, ...]:
    if not isinstance(value, list) or not value:
        raise ArtifactError(f"{where}: field '{name}' must be a non-empty list of {{name, dtype, shape}}, "
                            f"got {_show(value)}; re-export the artifact")
    out = []
    for i, item in enumerate(value):
        ok = (isinstance(item, dict) and set(item) == {"name", "dtype", "shape"} and isinstance(item["name"], str)
              and isinstance(item["dtype"], str) and isinstance(item["shape"], list)
              and all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                      for d in item["shape"]) and len(item["shape"]) <= 8)
        if not ok:
            raise ArtifactError(f"{where}: {name}[{i}] must be {{name: str, dtype: str, shape: [int | str, ...]}}, "
                                f"got {_show(item)}; re-export the artifact")
        out.append(TensorInfo(item["name"], item["dtype"], tuple(item["shape"])))
    return tuple(out)


def _files(value: Any, where: str) -> dict[str, FileEntry]:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where}: field 'files' must be a JSON object of path -> {{sha256, size}}, "
                            f"got {_show(value)}; re-export the artifact")
    out = {}
    for rel, meta in value.items():
        problem = path_problem(rel)
        if problem:
            raise ArtifactError(f"{where}: files entry {_show(rel)} {problem}; an artifact lists only files "
                                "inside its own folder: re-export it")
        ok = (isinstance(meta, dict) and set(meta) == {"sha256", "size"} and isinstance(meta["sha256"], str)
              and len(meta["sha256"]) == 64 and isinstance(meta["size"], int) and not isinstance(meta["size"], bool)
              and meta["size"] >= 0)
        if not ok:
            raise ArtifactError(f"{where}: files['{rel}'] must be {{sha256: 64 hex digits, size: int >= 0}}, "
                                f"got {_show(meta)}; re-export the artifact")
        out[rel] = FileEntry(meta["sha256"], meta["size"])
    return out


# ---------------------------------------------------------------- confinement


def path_problem(rel: Any) -> str | None:
    """Why ``rel`` is not a safe artifact path (relative, normalised, POSIX, inside the folder), or None.

    Only the text is judged here; ``zoo.artifact.artifact_path`` also refuses a
    path that leaves the folder through a symlink on disk.
    """
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if len(rel) > MAX_PATH_CHARS or "\x00" in rel:
        return f"is longer than {MAX_PATH_CHARS} characters or holds a NUL byte"
    if rel.startswith("/") or "\\" in rel or (len(rel) > 1 and rel[1] == ":"):
        return "is absolute or not a POSIX path (write it relative, with '/')"
    parts = rel.split("/")
    if ".." in parts:
        return "leads out of the artifact folder ('..')"
    if any(part in ("", ".") for part in parts):
        return "is not normalised (empty or '.' parts)"
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        return "has a part longer than 255 bytes"
    return None


# ---------------------------------------------------------------- preprocess and tolerances


def _check_preprocess(pp: dict[str, Any], where: str) -> None:
    """The keys of the preprocess record that the runtime reads; other (task-specific) keys pass through."""
    def bad(key: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{where}: preprocess.{key} must be {expected}, got {_show(pp[key])}; "
                             "re-export the artifact")

    files = pp.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise bad("files", "a list of file names")
    for rel in files:
        problem = path_problem(rel)
        if problem:
            raise ArtifactError(f"{where}: preprocess.files entry {_show(rel)} {problem}; re-export the artifact")
    for key, choices in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES), ("padding_side", SIDES),
                         ("truncation_side", SIDES), ("pooling", _poolings())):
        if pp.get(key) is not None and pp[key] not in choices:
            raise bad(key, f"one of {', '.join(choices)}")
    for key in ("pad_token_id", "pad_id", "pad_type_id"):
        if pp.get(key) is not None and not _is_int(pp[key], 0, 1 << 31):
            raise bad(key, "a token id (an integer >= 0)")
    if pp.get("pad_token") is not None and not isinstance(pp["pad_token"], str):
        raise bad("pad_token", "a string")
    if pp.get("max_length") is not None and not _is_int(pp["max_length"], 1, MAX_SEQUENCE):
        raise bad("max_length", f"an integer from 1 to {MAX_SEQUENCE}")
    _check_image_preprocess(pp, bad)


def _check_image_preprocess(pp: dict[str, Any], bad: Any) -> None:
    size = pp.get("input_size")
    if size is None:
        return
    if not (isinstance(size, list) and len(size) == 3 and _is_int(size[0], 1, 4)
            and all(_is_int(side, 1, MAX_IMAGE_SIDE) for side in size[1:])):
        raise bad("input_size", f"[channels 1..4, height, width] with sides from 1 to {MAX_IMAGE_SIDE}")
    for key in ("mean", "std"):
        values = pp.get(key)
        if values is not None and not (isinstance(values, list) and len(values) == size[0]
                                       and all(_is_number(v) for v in values)):
            raise bad(key, f"a list of {size[0]} finite numbers (one per channel)")
    if pp.get("std") is not None and 0 in pp["std"]:
        raise bad("std", "non-zero (it divides)")
    crop = pp.get("crop_pct")
    # the image is resized to side / crop_pct before the crop: bound that size too
    if crop is not None and not (_is_number(crop) and 0 < crop <= 1 and max(size[1:]) / crop <= MAX_IMAGE_SIDE):
        raise bad("crop_pct", f"a number in (0, 1] with input side / crop_pct <= {MAX_IMAGE_SIDE}")


def _check_tolerances(tol: dict[str, Any], where: str) -> None:
    for key, value in tol.items():
        if key == "rule" and value in TOLERANCE_RULES or key in ("scale", "widened") and isinstance(value, str):
            continue
        if key == "rule":
            raise ArtifactError(f"{where}: tolerances.rule = {_show(value)} is not one this zoo knows "
                                f"({', '.join(TOLERANCE_RULES)}); upgrade zoo-toolkit or re-export the artifact")
        if key not in ("atol", "rtol", "cosine") or not (_is_number(value) and value >= 0):
            raise ArtifactError(f"{where}: tolerances.{key} = {_show(value)}; valid: rule, scale, widened, and "
                                "atol, rtol, cosine each a finite number >= 0: re-export the artifact")


def _check_engine(engine: dict[str, Any], where: str) -> None:
    if set(engine) != {"name", "precision"} or engine["name"] not in ENGINES or engine["precision"] not in PRECISIONS:
        raise ArtifactError(f"{where}: engine = {_show(engine)}; valid: {{name: {' | '.join(ENGINES)}, precision: "
                            f"{' | '.join(PRECISIONS)}}}: upgrade zoo-toolkit or re-export the artifact")


def _poolings() -> tuple[str, ...]:
    from zoo.spec import POOLINGS

    return POOLINGS


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
