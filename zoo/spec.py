"""What a model *is*, as plain frozen dataclasses that round-trip to YAML/JSON.

No torch here: the registry, the CLI's ``list``/``info`` and the runtime all
read specs without importing a deep-learning framework.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# Modules of zoo/tasks/ that are not tasks: the interface and what every task's runtime part shares.
TASK_SUPPORT_MODULES = frozenset({"base", "preprocess", "results"})


def task_names() -> tuple[str, ...]:
    """Every task this zoo handles: one module per task under zoo/tasks/, its name with dashes.

    Read from the folder, not imported, so that this bottom layer never imports the task layer
    (``zoo.tasks`` itself asks this function)."""
    names = [m.name.replace("_", "-") for m in pkgutil.iter_modules([str(Path(__file__).parent / "tasks")])
             if not m.name.startswith("_") and m.name not in TASK_SUPPORT_MODULES]
    return tuple(sorted(names))


TASKS: tuple[str, ...] = task_names()
Source = Literal["hf", "timm"]
SOURCES: tuple[str, ...] = get_args(Source)
Pooling = Literal["mean", "cls", "max", "lasttoken"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
DTYPES = ("float32", "int64", "int32", "bool")
# image preprocessing in timm's data-config vocabulary (what an image artifact records)
IMAGE_PREPROCESS_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class InputSpec:
    """One graph input. A string in ``shape`` names a dynamic axis."""

    name: str
    dtype: str = "int64"
    shape: tuple[int | str, ...] = ("batch", "sequence")

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class Preprocess:
    """How raw inputs become tensors. Image, text and audio fields are exclusive (``mean``/``std`` aside)."""

    # images (timm data-config vocabulary)
    input_size: tuple[int, int, int] | None = None  # (C, H, W)
    mean: tuple[float, ...] | None = None  # per channel; audio filterbanks: one data-set value (AST)
    std: tuple[float, ...] | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest
    crop_pct: float | None = None
    crop_mode: str | None = None  # center | squash | border | center-floor (transformers' crop offsets)
    # text
    max_length: int | None = None
    pooling: str | None = None  # sentence embeddings only
    normalize: bool = False  # embeddings (text or image): L2-normalised
    # audio (transformers feature-extractor vocabulary)
    sampling_rate: int | None = None  # Hz the model expects; other rates are resampled
    features: str | None = None  # waveform (wav2vec2, HuBERT ...) | fbank (AST's Kaldi log-mel filterbank)
    do_normalize: bool = False  # waveform: zero mean, unit variance per clip; fbank: with mean/std
    num_mel_bins: int | None = None  # fbank
    max_frames: int | None = None  # fbank: frames padded / truncated to this (AST's max_length)
    max_seconds: float | None = None  # waveform: longer clips are truncated


ORT_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")

# The oldest opset both exporters (dynamo and TorchScript) write for the models zoo handles; the newest is
# whatever the installed onnx knows. The registry and ``zoo export --opset`` both ask opset_problem.
OPSET_MIN = 13


def opset_problem(value: object) -> str | None:
    """Why ``value`` is not an opset zoo can export to, or None."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(value, int) and not isinstance(value, bool) and OPSET_MIN <= value <= newest:
        return None
    return f"must be an integer from {OPSET_MIN} to {newest} (the exporters' range with this onnx)"


@dataclass(frozen=True)
class ExportSettings:
    opset: int = 18
    # onnxruntime graph optimisation level the graph was verified at; the runtime opens it at the same level
    ort_optimization: str = "all"


@dataclass(frozen=True)
class Tolerances:
    """Judged like ``allclose``: |onnx - torch| <= atol + rtol * |torch|."""

    atol: float = 1e-4
    rtol: float = 1e-3
    cosine: float = 0.9999  # minimum cosine similarity for embeddings


@dataclass(frozen=True)
class ModelSpec:
    """Everything zoo knows about a model before any weights are touched."""

    name: str
    source: str
    source_id: str
    task: str
    arch: str = ""  # HF model_type or timm architecture
    revision: str | None = None
    inputs: tuple[InputSpec, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    export: ExportSettings = field(default_factory=ExportSettings)
    verify: Tolerances = field(default_factory=Tolerances)
    labels: tuple[str, ...] | None = None
    description: str = ""
    local_path: str | None = None  # a folder holding config and weights
    origin: str = "registry"  # registry | hf | timm | local | run | artifact | checkpoint
    trust_remote_code: bool = False

    @property
    def positional_inputs(self) -> bool:
        """How the built module's forward takes the inputs: timm models take the image tensor positionally,
        transformers models take every input by name."""
        return self.source == "timm"

    @property
    def source_name(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.source}:{self.source_id}{rev}"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["inputs"] = tuple(
            InputSpec(i["name"], i.get("dtype", "int64"), tuple(i.get("shape", ())))
            for i in data.get("inputs", ())
        )
        data["preprocess"] = _build(Preprocess, data.get("preprocess") or {})
        data["export"] = _build(ExportSettings, data.get("export") or {})
        data["verify"] = _build(Tolerances, data.get("verify") or {})
        if data.get("labels") is not None:
            data["labels"] = tuple(str(x) for x in data["labels"])
        return cls(**data)


def _build(cls: type, values: dict[str, Any]) -> Any:
    tuples = {"input_size", "mean", "std"}
    kwargs = {k: (tuple(v) if k in tuples and v is not None else v) for k, v in values.items()}
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    """Tuples become lists so YAML/JSON dumps hold only plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

