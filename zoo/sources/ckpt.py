"""A ``.ckpt`` file that Lightning wrote from a ``zoo.lightning.ZooModule``, as a model source.

    zoo info lightning_logs/version_0/checkpoints/last.ckpt
    zoo export lightning_logs/version_0/checkpoints/last.ckpt --onnx --out artifacts/digits

``ZooModule`` records, in the hyper-parameters Lightning saves, what zoo needs to rebuild its model
without Lightning: the spec it trained (the source, the name, the image size ...), the labels of a new
head and the constructor arguments (``record`` below writes that entry). zoo builds the model with random
weights from these, loads the checkpoint's ``state_dict`` into it (every key must fit) and saves it once in
the source's own format (``save_pretrained`` / timm) into a folder named after the file's sha256 under
``$ZOO_CACHE/ckpt`` (default ``~/.cache/zoo``); from then on the checkpoint is that model folder, as a zoo
run is its ``model/`` folder.

The file is a torch pickle, and unpickling may run any code the file names: it is read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only (what Lightning
writes: dicts, lists, numbers, strings, tensors) and refuses everything else. Lightning is not imported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

from zoo.artifact import sha256_file
from zoo.errors import ConfigError, first_line
from zoo.spec import ModelSpec

RECORD = "zoo"  # the hyper-parameter ZooModule writes
FORMAT = 1
MODEL_PREFIX = "model."  # ZooModule holds the model as its ``model`` attribute
DONE_FILE = "ckpt.json"
NEEDS = ("zoo rebuilds a .ckpt written by Lightning from a zoo.lightning.ZooModule (its hyper-parameters "
         "record the model); train with ZooModule, or export the model from a zoo run or a model folder")


def record(spec: ModelSpec, *, head_labels: tuple[str, ...] | None, labels: tuple[str, ...],
           model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What ZooModule saves under ``hyper_parameters[RECORD]``: the spec its model was built from, the
    labels of a new head (None: the source's head kept), the final labels and the constructor arguments."""
    return {"format": FORMAT, "spec": spec.to_dict(), "head_labels": list(head_labels) if head_labels else None,
            "labels": list(labels), "model_kwargs": dict(model_kwargs)}


def model_folder(path: Path) -> tuple[Path, ModelSpec]:
    """The model folder of checkpoint ``path`` (written on first use) and the spec of the trained model."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():  # DeepSpeed writes a folder of shards under the checkpoint's name
        raise ConfigError(f"{path} is a folder of sharded (DeepSpeed) checkpoint files, not one .ckpt file; "
                          "consolidate it first with lightning.pytorch.utilities.deepspeed."
                          "convert_zero_checkpoint_to_fp32_state_dict(FOLDER, FILE.ckpt)")
    checkpoint = _load(path)
    found = _read_record(checkpoint, path)
    built = found.spec
    folder = _cache_root() / sha256_file(path)[:16]
    final = dataclasses.replace(built, name=path.stem, labels=found.labels, origin="checkpoint", local_path=str(folder),
                                description=f"{built.description} trained with Lightning ({path.name})".strip())
    if not (folder / DONE_FILE).is_file():
        _write_folder(checkpoint, path, found, final, folder)
    return folder, final


def _load(path: Path) -> dict[str, Any]:
    import pickle
    import zipfile

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a class: not a plain Lightning checkpoint
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        found = named.group(1) if named else first_line(exc, 120)
        raise ConfigError(f"{path.name} holds Python objects other than tensors and plain values ({found}), "
                          f"which zoo does not unpickle: they could run code; {NEEDS}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path} is not a readable torch checkpoint ({first_line(exc, 120)}); it may be "
                          "truncated, or not a .ckpt Lightning wrote") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path.name} holds a {type(checkpoint).__name__}, not a Lightning checkpoint; {NEEDS}")
    return checkpoint


@dataclasses.dataclass(frozen=True)
class Record:
    """What rebuilds a ZooModule's model: ``record``'s entry, read back."""

    spec: ModelSpec
    head_labels: tuple[str, ...] | None
    labels: tuple[str, ...]
    model_kwargs: dict[str, Any]


def read_record(entry: Any) -> Record:
    """``record``'s entry as a Record; a damaged or other-format one is a ConfigError."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
        raise ConfigError(f"the '{RECORD}' hyper-parameter has format {found}; this zoo reads format {FORMAT}: "
                          "use the zoo version that trained it")
    try:
        head = entry.get("head_labels")
        return Record(ModelSpec.from_dict(entry["spec"]), tuple(head) if head else None, tuple(entry["labels"]),
                      dict(entry.get("model_kwargs") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the '{RECORD}' hyper-parameter is damaged ({first_line(exc, 120)}); {NEEDS}") from None


def _read_record(checkpoint: dict[str, Any], path: Path) -> Record:
    entry = (checkpoint.get("hyper_parameters") or {}).get(RECORD)
    if entry is None or "state_dict" not in checkpoint:
        raise ConfigError(f"{path.name} has no '{RECORD}' hyper-parameter (it does not come from ZooModule); {NEEDS}")
    try:
        return read_record(entry)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


def _write_folder(checkpoint: dict[str, Any], path: Path, found: Record, final: ModelSpec, folder: Path) -> None:
    """Rebuild the model, load the checkpoint's weights, save it in its source's format; written aside,
    then renamed into place, so a folder that exists is complete (and two processes may race to write it)."""
    import json
    import tempfile

    from zoo import sources

    built, model_kwargs = found.spec, found.model_kwargs
    source = sources.for_spec(built)
    model, _ = source.create_model(built, labels=found.head_labels, pretrained=False,
                                   model_kwargs=model_kwargs or None)
    weights = {k.removeprefix(MODEL_PREFIX): v for k, v in checkpoint["state_dict"].items()
               if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path.name}: its weights do not fit the model its hyper-parameters describe "
                          f"({first_line(exc, 160)}); was the checkpoint edited?") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    try:
        # saved with the base's local_path: the tokenizer / preprocessor files are copied from there
        source.save_model(model, dataclasses.replace(final, local_path=built.local_path), stage,
                          model_args=_model_args(built, model_kwargs))
        (stage / DONE_FILE).write_text(json.dumps({"file": str(path), "spec": final.to_dict()}, indent=2))
        try:
            stage.replace(folder)
        except OSError:  # another process renamed its complete copy into place first
            if not (folder / DONE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _model_args(spec: ModelSpec, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments a timm folder carries: a fixed-size model (ViT) trained at another image size."""
    args = dict(model_kwargs)
    if spec.source == "timm" and spec.preprocess.input_size:
        import timm

        if timm.models.get_pretrained_cfg_value(spec.arch or spec.source_id, "fixed_input_size"):
            args["img_size"] = list(spec.preprocess.input_size[1:])
    return args


def _cache_root() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")).expanduser() / "ckpt"
