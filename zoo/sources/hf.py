"""Hugging Face transformers models (and sentence-transformers folders).

Describing a model reads only JSON files; torch and transformers are imported
when a model is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, ModelUnavailableError, UnsupportedTaskError, first_line
from zoo.folders import download_command, read_json
from zoo.spec import ModelSpec, Preprocess

_ST_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_model_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def describe(source_id: str, revision: str | None = None) -> ModelSpec:
    """Spec of a hub model from its files in the local cache (or the hub when online)."""
    folder = _locate(source_id, revision, patterns=["*.json", "1_Pooling/*", "*.txt", "*.model"])
    spec = describe_folder(folder, name=f"hf:{source_id}" + (f"@{revision}" if revision else ""))
    return dataclasses.replace(spec, source_id=source_id, revision=revision, origin="hf", local_path=None)


def _cached(source_id: str, revision: str | None, patterns: list[str] | None = None) -> Path | None:
    """The repo's snapshot folder in the local cache (whatever files of it are there), else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source_id, revision=revision, local_files_only=True,
                                      allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _locate(source_id: str, revision: str | None, patterns: list[str] | None = None) -> Path:
    """A local snapshot folder of a hub repo: from the cache, else downloaded when online."""
    from huggingface_hub import snapshot_download

    cached = _cached(source_id, revision, patterns)
    if cached is not None:
        return cached
    if is_offline():
        raise ModelUnavailableError(_offline_message(source_id, revision))
    try:
        return Path(snapshot_download(source_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # network errors come in many types
        raise ModelUnavailableError(f"{_offline_message(source_id, revision)} (hub said: {type(exc).__name__}: "
                                    f"{first_line(exc, 200)})") from exc


def _offline_message(source_id: str, revision: str | None = None) -> str:
    # --random-init is named only with what it needs: it builds the weights, never the config or tokenizer
    return (f"hf:{source_id} is not in the local Hugging Face cache and the hub cannot be reached; "
            "pass a local save_pretrained folder instead (zoo info ./folder), or download it where there is "
            f"network ({download_command(source_id, revision)}). For a smoke test with --random-init, its config "
            f"and tokenizer files are enough: {download_command(source_id, revision, configs_only=True)}")


def fill_in(spec: ModelSpec) -> ModelSpec:
    """What the hub's config.json says and a registry entry left out (class names), when it is cached.

    Reads the local cache only: resolving an alias never waits on the network.
    """
    if spec.labels is not None or spec.local_path:
        return spec
    try:
        folder = _cached(spec.source_id, spec.revision, ["config.json"])
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        return spec
    if folder is None or not (folder / "config.json").is_file():
        return spec
    from zoo.tasks import get_task

    labels = get_task(spec.task).labels_from_config(read_json(folder / "config.json"))
    return dataclasses.replace(spec, labels=labels) if labels else spec


def describe_folder(path: Path, name: str | None = None) -> ModelSpec:
    """Spec of a save_pretrained or sentence-transformers folder; its task comes from its config."""
    from zoo.tasks import task_for_hf_config

    path = Path(path).resolve()
    config = read_json(path / "config.json")
    model_type = config.get("model_type", "")
    st = _sentence_transformers_settings(path)
    try:
        task = task_for_hf_config(config, sentence_transformers=st is not None)
    except UnsupportedTaskError as exc:
        raise UnsupportedTaskError(f"folder '{path}': {exc}") from None
    inputs, preprocess, labels = task.describe_hf(path, config, st)
    return ModelSpec(
        name=name or _folder_name(path), source="hf", source_id=str(path),
        task=task.name, arch=model_type, inputs=inputs, preprocess=preprocess, labels=labels,
        description=_folder_description(config, model_type, st),
        local_path=str(path), origin="local",
    )


def _folder_name(path: Path) -> str:
    """The folder's name, or its parent's when the folder has a generic one (pkg/model, snapshots/<sha>)."""
    generic = path.name in {"model", "models", "weights", "checkpoint", "final"} or (
        len(path.name) == 40 and path.parent.name == "snapshots")
    if not generic:
        return path.name
    parent = path.parent.parent.name if path.parent.name == "snapshots" else path.parent.name
    return parent.removeprefix("models--").replace("--", "/") or path.name


def _folder_description(config: dict[str, Any], model_type: str, st: dict[str, Any] | None) -> str:
    arch = (config.get("architectures") or [model_type])[0]
    base = config.get("_name_or_path")
    kind = "sentence-transformers " if st is not None else ""
    return f"{kind}{arch}" + (f" (based on {base})" if base else "")


def _sentence_transformers_settings(path: Path) -> dict[str, Any] | None:
    modules = read_json(path / "modules.json") if (path / "modules.json").is_file() else None
    if not isinstance(modules, list):
        return None
    pooling, normalize = None, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = read_json(path / module.get("path", "") / "config.json")
            pooling = next((v for k, v in _ST_POOLING.items() if cfg.get(k)), "mean")
        elif kind.endswith("Normalize"):
            normalize = True
    bert_cfg = read_json(path / "sentence_bert_config.json")
    return {"pooling_args": {"pooling": pooling, "normalize": normalize},
            "max_seq_length": bert_cfg.get("max_seq_length")}


# ---------------------------------------------------------------- torch side


def auto_class(spec: ModelSpec):  # noqa: ANN201 - returns a transformers class
    import transformers

    from zoo.tasks import get_task

    task = get_task(spec.task)
    name = task.hf_model_class(spec)
    if name is None:
        raise UnsupportedTaskError(f"{spec.name}: task {spec.task} has no transformers auto class; "
                                   "build it from another source")
    return getattr(transformers, name)


def local_folder(spec: ModelSpec) -> Path:
    """Where transformers should load from: the spec's folder, else a local hub snapshot."""
    if spec.local_path:
        return Path(spec.local_path)
    return _locate(spec.source_id, spec.revision)


def create_model(spec: ModelSpec, *, num_labels: int | None = None,
                 labels: list[str] | tuple[str, ...] | None = None, pretrained: bool = True,
                 model_kwargs: dict[str, Any] | None = None) -> tuple[Any, Preprocess]:
    """The transformers module for ``spec`` (with a fresh head when labels change), as its task runs it."""
    import transformers

    from zoo.tasks import get_task

    transformers.utils.logging.disable_progress_bar()  # zoo shows its own progress
    location = str(local_folder(spec))
    head: dict[str, Any] = {}
    if labels is not None:
        head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}}
    elif num_labels is not None:
        head = {"num_labels": num_labels}
    remote = {"trust_remote_code": spec.trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(location, **remote, **head, **(model_kwargs or {}))
        cls = auto_class(spec)
        if pretrained:
            model = cls.from_pretrained(location, config=config, ignore_mismatched_sizes=bool(head), **remote)
        else:
            model = cls.from_config(config, **remote)
            if (Path(location) / "generation_config.json").is_file():
                # from_config derives generation defaults from config.json alone: the folder's own (Whisper's
                # language and task ids, a translator's beams) must survive a --random-init build and a fine-tuned
                # run's save, which loads the trained weights into such a build
                model.generation_config = transformers.GenerationConfig.from_pretrained(location)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{spec.name} needs custom code from its repository; zoo refuses remote code "
                              "unless the registry entry sets trust_remote_code: true") from exc
        raise
    except OSError as exc:
        # --random-init is the way out only when the weights were what was missing
        way_out = "; pass a local folder, or use --random-init (pretrained=False) for a smoke test" if pretrained \
            else f"; --random-init needs the model's config.json in {location}"
        raise ModelUnavailableError(f"cannot load {'weights' if pretrained else 'the config'} of {spec.name} from "
                                    f"{location}: {first_line(exc)}{way_out}") from exc
    model = get_task(spec.task).adapt_model(model, spec)
    model.eval()
    return model, spec.preprocess


def save_model(model: Any, spec: ModelSpec, folder: Path, *, model_args: dict[str, Any] | None = None) -> None:
    """A save_pretrained folder (safetensors, config with labels) plus the source's preprocessor files.

    ``model_args`` is accepted for symmetry with timm; config.json already holds them.
    """
    model.save_pretrained(folder, safe_serialization=True)
    if spec.preprocess.pooling and spec.local_path:
        _copy_sentence_transformers_files(Path(spec.local_path), folder)
    save_preprocessor(spec, folder)


def _copy_sentence_transformers_files(src: Path, dest: Path) -> None:
    import shutil

    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    for sub in src.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit():
            shutil.copytree(sub, dest / sub.name, dirs_exist_ok=True)


def save_preprocessor(spec: ModelSpec, folder: Path) -> None:
    """The files transformers needs beside the weights to preprocess inputs (tokenizer, image processor)."""
    from zoo.tasks import get_task

    processor = get_task(spec.task).load_processor(spec, local_folder(spec))
    if processor is not None:
        processor.save_pretrained(folder)
    src = local_folder(spec) / "preprocessor_config.json"
    # an image-text model's processor is its tokenizer: its image processor's file comes from the source
    if src.is_file() and not (Path(folder) / src.name).is_file():
        import shutil

        shutil.copy2(src, Path(folder) / src.name)
    save_tokenizer(local_folder(spec), Path(folder))


def save_tokenizer(source: Path, folder: Path) -> None:
    """A speech model's processor is its feature extractor: its tokenizer (a CTC vocabulary, Whisper's BPE), which
    turns its outputs into text, comes from the source's files."""
    if (Path(source) / "tokenizer_config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        import transformers

        transformers.AutoTokenizer.from_pretrained(source).save_pretrained(folder)
