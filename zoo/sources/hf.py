"""Hugging Face transformers models (and sentence-transformers folders).

Describing a model reads only JSON files; torch and transformers are imported
when a model is created.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, ModelUnavailableError
from zoo.spec import ModelSpec, Preprocess, image_inputs, text_inputs

# Architectures whose position ids start after the padding index, so two
# positions of max_position_embeddings are never usable by tokens.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
_TASK_SUFFIXES = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
}
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_ST_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
_IMAGE_TYPES = {"vit", "deit", "beit", "convnext", "convnextv2", "swin", "resnet", "dinov2", "efficientnet", "mobilevit"}


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
    import dataclasses

    return dataclasses.replace(spec, source_id=source_id, revision=revision, origin="hf", local_path=None)


def _locate(source_id: str, revision: str | None, patterns: list[str] | None = None) -> Path:
    """A local snapshot folder of a hub repo: from the cache, else downloaded when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source_id, revision=revision, local_files_only=True,
                                      allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if is_offline():
        raise ModelUnavailableError(_offline_message(source_id))
    try:
        return Path(snapshot_download(source_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # network errors come in many types
        raise ModelUnavailableError(f"{_offline_message(source_id)} (hub said: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]})") from exc


def _offline_message(source_id: str) -> str:
    return (f"hf:{source_id} is not in the local Hugging Face cache and the hub cannot be reached; "
            "pass a local save_pretrained folder instead (zoo info ./folder), or download it on a "
            "machine with network access (huggingface-cli download " + source_id + ")")


def describe_folder(path: Path, name: str | None = None) -> ModelSpec:
    """Spec of a save_pretrained or sentence-transformers folder."""
    path = Path(path).resolve()
    config = _read_json(path / "config.json")
    model_type = config.get("model_type", "")
    st = _sentence_transformers_settings(path)
    task = "feature-extraction" if st is not None else _task_from_config(config)
    labels = _labels(config) if task.endswith("classification") else None
    if task == "image-classification" or model_type in _IMAGE_TYPES:
        preprocess = _image_preprocess(path, config)
        inputs = image_inputs(preprocess.input_size or (3, 224, 224))
    else:
        preprocess = Preprocess(max_length=_max_length(path, config, st), **(st or {}).get("pooling_args", {}))
        names = ["input_ids", "attention_mask"]
        if int(config.get("type_vocab_size", 0) or 0) >= 2:
            names.append("token_type_ids")
        inputs = text_inputs(tuple(names))
    return ModelSpec(
        name=name or _folder_name(path), source="hf", source_id=str(path),
        task=task, arch=model_type, inputs=inputs, preprocess=preprocess, labels=labels,
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained") from exc


def _sentence_transformers_settings(path: Path) -> dict[str, Any] | None:
    modules = _read_json(path / "modules.json") if (path / "modules.json").is_file() else None
    if not isinstance(modules, list):
        return None
    pooling, normalize = None, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _read_json(path / module.get("path", "") / "config.json")
            pooling = next((v for k, v in _ST_POOLING.items() if cfg.get(k)), "mean")
        elif kind.endswith("Normalize"):
            normalize = True
    bert_cfg = _read_json(path / "sentence_bert_config.json")
    return {"pooling_args": {"pooling": pooling, "normalize": normalize},
            "max_seq_length": bert_cfg.get("max_seq_length")}


def _task_from_config(config: dict[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        for suffix, task in _TASK_SUFFIXES.items():
            if arch.endswith(suffix):
                return task
    if config.get("model_type") in _IMAGE_TYPES:
        return "image-classification"
    return "feature-extraction"


def _labels(config: dict[str, Any]) -> tuple[str, ...] | None:
    id2label = config.get("id2label")
    if not id2label:
        return None
    return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))


def _max_length(path: Path, config: dict[str, Any], st: dict[str, Any] | None) -> int:
    limit = int(config.get("max_position_embeddings", 512) or 512)
    if config.get("model_type") in _POSITION_OFFSET_TYPES:
        limit -= 2
    tok_max = _read_json(path / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    if st and st.get("max_seq_length"):
        limit = min(limit, int(st["max_seq_length"]))
    return limit


def _image_preprocess(path: Path, config: dict[str, Any]) -> Preprocess:
    pp = _read_json(path / "preprocessor_config.json")
    size = pp.get("size", config.get("image_size", 224))
    if isinstance(size, dict):
        h = size.get("height") or size.get("shortest_edge") or 224
        w = size.get("width") or size.get("shortest_edge") or h
    else:
        h = w = int(size)
    channels = int(config.get("num_channels", 3))
    return Preprocess(
        input_size=(channels, int(h), int(w)),
        mean=tuple(pp.get("image_mean", (0.5,) * channels)),
        std=tuple(pp.get("image_std", (0.5,) * channels)),
        interpolation=_RESAMPLE.get(pp.get("resample", 2), "bilinear"),
        crop_pct=1.0, crop_mode="squash",
    )


# ---------------------------------------------------------------- torch side


def _auto_class(task: str):  # noqa: ANN202 - returns a transformers class
    import transformers

    return {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "image-classification": transformers.AutoModelForImageClassification,
        "feature-extraction": transformers.AutoModel,
    }[task]


def model_location(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Where transformers should load from: the spec's folder, else a local hub snapshot."""
    if spec.local_path:
        return spec.local_path, {}
    return str(_locate(spec.source_id, spec.revision)), {}


def create_model(spec: ModelSpec, *, num_labels: int | None = None,
                 labels: list[str] | tuple[str, ...] | None = None, pretrained: bool = True,
                 model_kwargs: dict[str, Any] | None = None) -> tuple[Any, Preprocess]:
    """The transformers module for ``spec`` (with a fresh head when labels change)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # zoo shows its own progress
    location, kwargs = model_location(spec)
    kwargs["trust_remote_code"] = spec.trust_remote_code
    head: dict[str, Any] = {}
    if labels is not None:
        head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}}
    elif num_labels is not None:
        head = {"num_labels": num_labels}
    try:
        config = transformers.AutoConfig.from_pretrained(location, **kwargs, **head, **(model_kwargs or {}))
        cls = _auto_class(spec.task)
        if pretrained:
            model = cls.from_pretrained(location, config=config, ignore_mismatched_sizes=bool(head), **kwargs)
        else:
            model = cls.from_config(config, trust_remote_code=spec.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{spec.name} needs custom code from its repository; zoo refuses remote code "
                              "unless the registry entry sets trust_remote_code: true") from exc
        raise
    except OSError as exc:
        raise ModelUnavailableError(f"cannot load weights of {spec.name} from {location}: "
                                    f"{str(exc).splitlines()[0]}; pass a local folder, or use "
                                    "--random-init (pretrained=False) for a smoke test") from exc
    if spec.preprocess.pooling:
        from zoo.sources._modules import SentenceEmbedder

        model = SentenceEmbedder(model, spec.preprocess.pooling, spec.preprocess.normalize)
    model.eval()
    return model, spec.preprocess


def output_name(spec: ModelSpec) -> str:
    if spec.task == "feature-extraction":
        return "embeddings" if spec.preprocess.pooling else "last_hidden_state"
    return "logits"


def inference_module(model: Any, spec: ModelSpec) -> Any:
    """A module whose forward takes the spec's inputs by name and returns one tensor."""
    from zoo.sources._modules import forward_wrapper

    return forward_wrapper(model, tuple(i.name for i in spec.inputs), output_name(spec))


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's own fast tokenizer (transformers), for export checks and training."""
    import transformers

    location, kwargs = model_location(spec)
    if not any((Path(location) / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would silently build an empty 5-token tokenizer here
        raise ModelUnavailableError(
            f"no tokenizer files in {location} (looked for {', '.join(TOKENIZER_FILES)}); training and the "
            "torch-free runtime need the model's own tokenizer: save it beside the model with "
            "tokenizer.save_pretrained(folder)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(location, use_fast=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"no tokenizer for {spec.name} in {location}: {str(exc).splitlines()[0]}; "
                                    "save one beside the model with tokenizer.save_pretrained(folder)") from exc
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{spec.name} has only a slow tokenizer; zoo's runtime needs tokenizer.json "
                          "(a fast tokenizer): convert it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    return tok


def save_model(model: Any, spec: ModelSpec, folder: Path, *, model_args: dict[str, Any] | None = None) -> None:
    """A save_pretrained folder (safetensors, config with labels) plus the preprocessor.

    ``model_args`` is accepted for symmetry with timm; config.json already holds them.
    """
    from zoo.sources._modules import SentenceEmbedder

    inner = model.transformer if isinstance(model, SentenceEmbedder) else model
    inner.save_pretrained(folder, safe_serialization=True)
    if isinstance(model, SentenceEmbedder) and spec.local_path:
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


def save_preprocessor(spec: ModelSpec, folder: Path) -> list[str]:
    """Write the files a torch-free runtime needs to preprocess inputs; return their names."""
    folder = Path(folder)
    if spec.is_text:
        before = set(os.listdir(folder)) if folder.exists() else set()
        tok = load_tokenizer(spec)
        tok.save_pretrained(folder)
        return sorted(set(os.listdir(folder)) - before | {"tokenizer.json"})
    location, kwargs = model_location(spec)
    src = Path(location) / "preprocessor_config.json"
    if src.is_file():
        import shutil

        shutil.copy2(src, folder / "preprocessor_config.json")
        return ["preprocessor_config.json"]
    return []
