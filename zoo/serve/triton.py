"""An artifact as a Triton / KServe model repository entry: ``DIR/NAME/1/model.onnx`` + ``config.pbtxt``.

    zoo triton artifacts/minilm model-repo              # then: tritonserver --model-repository model-repo

The configuration is for Triton's onnxruntime backend (platform
``onnxruntime_onnx``): inputs and outputs with the manifest's datatypes, shapes
without the batch axis (``-1`` for a variable axis), ``max_batch_size`` and a
``dynamic_batching`` block. A classifier's labels go to ``labels.txt`` beside it
(Triton's classification extension reads it). Needs neither torch nor the
serving extra: the manifest comes from ``zoo.load``, the text is written here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.artifact import MODEL_FILE, staged_dir
from zoo.errors import ConfigError
from zoo.serve.names import PLATFORM, VERSION, datatype_of, parse_artifact_arg

LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class RepositoryEntry:
    """What was written: the model's folder in the repository and its configuration text."""

    path: Path
    name: str
    config: str


def write_model_repository(artifact: str | Path, repository: str | Path, *, name: str | None = None,
                           max_batch_size: int = 32, max_queue_delay_us: int = 5000) -> RepositoryEntry:
    """Write ``repository/NAME/`` (``config.pbtxt``, ``1/model.onnx``) for ``artifact``; NAME defaults to its folder's.

    The artifact is opened with ``zoo.load`` first (hashes checked), and the entry
    appears only complete: it is written aside and renamed into place.
    """
    from zoo.runtime import load

    if max_batch_size < 0 or max_queue_delay_us < 0:
        raise ConfigError(f"max_batch_size={max_batch_size}, max_queue_delay_us={max_queue_delay_us}; both must "
                          "be 0 or more (max_batch_size 0 turns Triton's batching off)")
    model_name, folder = parse_artifact_arg(f"{name}={artifact}" if name else str(artifact))
    model = load(folder)
    info = model.info
    batchable = max_batch_size > 0 and _batch_axis_everywhere(info)
    config = model_config(model_name, info, max_batch_size if batchable else 0, max_queue_delay_us,
                          labels=bool(model.labels))
    with staged_dir(Path(repository) / model_name, option="--name or REPOSITORY") as stage:
        (stage / VERSION).mkdir()
        for file in _graph_files(info):
            shutil.copy2(model.folder / file, stage / VERSION / file)
        if model.labels:
            (stage / LABELS_FILE).write_text("\n".join(model.labels) + "\n")
        (stage / "config.pbtxt").write_text(config)
    return RepositoryEntry(path=Path(repository) / model_name, name=model_name, config=config)


def _batch_axis_everywhere(info: dict[str, Any]) -> bool:
    """Triton batches only when axis 0 of every input and output is the (variable) batch axis."""
    return all(t.get("shape") and isinstance(t["shape"][0], str) for t in [*info["inputs"], *info["outputs"]])


def _graph_files(info: dict[str, Any]) -> list[str]:
    # model.onnx, plus its external data file where the model needed one (a 2 GB+ graph)
    return [f for f in info.get("files", {}) if f == MODEL_FILE or f.startswith(MODEL_FILE + ".")]


def model_config(name: str, info: dict[str, Any], max_batch_size: int, max_queue_delay_us: int, *,
                 labels: bool = False) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig message)."""
    lines = [f'name: "{name}"', f'platform: "{PLATFORM}"', 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch_size}"]
    for kind, tensors in (("input", info["inputs"]), ("output", info["outputs"])):
        entries = [_tensor(t, batched=max_batch_size > 0,
                           label_file=labels and kind == "output" and i == 0) for i, t in enumerate(tensors)]
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    return "\n".join(lines) + "\n"


def _tensor(tensor: dict[str, Any], *, batched: bool, label_file: bool) -> str:
    shape = tensor.get("shape", [])
    dims = [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]
    fields = [f'name: "{tensor["name"]}"', f"data_type: TYPE_{_triton_type(tensor.get('dtype', 'float32'))}",
              f"dims: [ {', '.join(map(str, dims))} ]"]
    if label_file:
        fields.append(f'label_filename: "{LABELS_FILE}"')
    return "  {\n" + "\n".join(f"    {f}" for f in fields) + "\n  }"


def _triton_type(dtype: str) -> str:
    # ModelConfig's DataType names are the protocol's datatypes, except BYTES which it calls STRING
    name = datatype_of(dtype)
    return "STRING" if name == "BYTES" else name
