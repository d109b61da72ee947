"""timm image models: ``timm:ARCH[.TAG]`` names and timm checkpoint folders.

A timm folder is what ``timm.models.save_for_hf`` writes: ``config.json`` with
``architecture``, ``num_classes``, ``label_names`` and ``pretrained_cfg``, beside
``model.safetensors``. timm loads it back with ``create_model("local-dir:PATH")``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from zoo.errors import ModelUnavailableError, NameNotFoundError, first_line
from zoo.spec import IMAGE_PREPROCESS_KEYS, ModelSpec, Preprocess


def is_model_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "architecture" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def describe(name: str) -> ModelSpec:
    """Spec of ``timm:ARCH[.TAG]`` from timm's own pretrained_cfg (no weights needed)."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise NameNotFoundError(unknown_model(name))
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (TAG) for ARCH."
        cfg = None
    if cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        shown = ", ".join(tags[:8]) + (f" (and {len(tags) - 8} more)" if len(tags) > 8 else "")
        raise NameNotFoundError(f"timm model '{arch}' has no pretrained tag '{tag}'; its tags: {shown or 'none'}. "
                                f"Write timm:{arch}.{tags[0] if tags else 'TAG'}, or timm:{arch} for its default")
    cfg_dict = cfg.to_dict()
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return _spec(name=f"timm:{name}", source_id=full, arch=cfg.architecture, cfg=cfg_dict,
                 num_classes=cfg.num_classes, label_names=None, local_path=None, origin="timm")


def unknown_model(name: str) -> str:
    """'timm has no model X' with the closest architecture names (spelling, case, 0 for O ...)."""
    import difflib

    import timm

    arch = name.split(".")[0]
    names = timm.list_models()
    close = difflib.get_close_matches(arch.lower(), names, n=5, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{arch.lower()}*") if n not in close][: 5 - len(close)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"timm has no model '{name}'.{hint} List them with "
            f"python -c \"import timm; print(timm.list_models('*{arch[:4].lower()}*'))\"")


def fill_in(spec: ModelSpec) -> ModelSpec:
    """What timm knows and a registry entry left out: the class names of the weights it names.

    Without timm installed (a runtime-only install) the entry is returned as it is.
    """
    if spec.labels is not None or spec.local_path:
        return spec
    try:
        import timm
    except ModuleNotFoundError:
        return spec
    try:
        cfg = timm.models.get_pretrained_cfg(spec.source_id)
    except RuntimeError:  # an entry naming a tag timm does not have: creating it reports that
        return spec
    if cfg is None:
        return spec
    return dataclasses.replace(spec, labels=_imagenet_labels(cfg.num_classes, cfg.to_dict()))


def describe_folder(path: Path, name: str | None = None) -> ModelSpec:
    path = Path(path).resolve()
    config = json.loads((path / "config.json").read_text())
    cfg = config.get("pretrained_cfg", {})
    labels = config.get("label_names")
    if isinstance(labels, dict):
        labels = [labels[k] for k in sorted(labels, key=int)]
    return _spec(name=name or path.name, source_id=str(path), arch=config["architecture"], cfg=cfg,
                 num_classes=config.get("num_classes"), label_names=labels, local_path=str(path), origin="local")


def _spec(*, name: str, source_id: str, arch: str, cfg: dict[str, Any], num_classes: int | None,
          label_names: list[str] | None, local_path: str | None, origin: str) -> ModelSpec:
    from zoo.tasks import default_timm_task
    from zoo.tasks._image import image_inputs

    preprocess = preprocess_from_cfg(cfg)
    labels = tuple(label_names) if label_names else _imagenet_labels(num_classes, cfg)
    return ModelSpec(
        name=name, source="timm", source_id=source_id, task=default_timm_task().name, arch=arch,
        inputs=image_inputs(preprocess.input_size or (3, 224, 224)), preprocess=preprocess,
        # no class count here: a fine-tuned head changes it, and the labels say it anyway
        labels=labels, description=f"timm {arch}",
        local_path=local_path, origin=origin,
    )


def preprocess_from_cfg(cfg: dict[str, Any]) -> Preprocess:
    values = {k: cfg[k] for k in IMAGE_PREPROCESS_KEYS if cfg.get(k) is not None}
    for key in ("input_size", "mean", "std"):
        if key in values:
            values[key] = tuple(values[key])
    return Preprocess(**values)


def _imagenet_labels(num_classes: int | None, cfg: dict[str, Any]) -> tuple[str, ...] | None:
    if num_classes not in (1000, 1001, 11821, 21841, 21843):
        return None
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(cfg) if cfg else None
    if not subset:
        return None
    return tuple(ImageNetInfo(subset).label_descriptions())


# ---------------------------------------------------------------- torch side


def create_model(spec: ModelSpec, *, num_labels: int | None = None,
                 labels: list[str] | tuple[str, ...] | None = None, pretrained: bool = True,
                 model_kwargs: dict[str, Any] | None = None) -> tuple[Any, Preprocess]:
    """The timm module for ``spec``; a new head when ``labels``/``num_labels`` is given."""
    import timm

    from zoo.tasks import get_task

    task = get_task(spec.task)
    location = f"local-dir:{spec.local_path}" if spec.local_path else spec.source_id
    kwargs: dict[str, Any] = {**task.timm_kwargs(spec), **(model_kwargs or {})}
    n = len(labels) if labels is not None else num_labels
    if n is not None:
        kwargs["num_classes"] = n
    size = spec.preprocess.input_size
    if size and not spec.local_path and _fixed_input_size(spec):
        kwargs["img_size"] = tuple(size[1:])
    try:
        model = timm.create_model(location, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        if not pretrained:
            raise
        raise ModelUnavailableError(
            f"cannot load pretrained weights of {spec.name} ({spec.source_id}): {first_line(exc, 200)}; "
            "pass a local timm folder, or use --random-init (pretrained=False) for a smoke test") from exc
    except Exception as exc:  # huggingface_hub raises its own types for missing files offline
        if not pretrained or "hub" not in type(exc).__module__ + str(exc).lower():
            raise
        raise ModelUnavailableError(
            f"cannot download weights of {spec.name} ({spec.source_id}) - the hub is unreachable; "
            "pass a local timm folder, or use --random-init (pretrained=False) for a smoke test") from exc
    model = task.adapt_model(model, spec)
    model.eval()
    return model, _merged_preprocess(model, spec)


def _fixed_input_size(spec: ModelSpec) -> bool:
    import timm

    return bool(timm.models.get_pretrained_cfg_value(spec.source_id, "fixed_input_size"))


def _merged_preprocess(model: Any, spec: ModelSpec) -> Preprocess:
    """timm's data config, with the spec's own preprocess fields taking precedence."""
    from timm.data import resolve_data_config

    base = preprocess_from_cfg(resolve_data_config(model=model))
    given = {k: v for k, v in dataclasses.asdict(spec.preprocess).items() if v not in (None, False)}
    return dataclasses.replace(base, **given)


def local_folder(spec: ModelSpec) -> Path | None:
    """The timm folder the spec was read from (None for a timm:ARCH name: timm keeps the files)."""
    return Path(spec.local_path) if spec.local_path else None


def save_model(model: Any, spec: ModelSpec, folder: Path, *, model_args: dict[str, Any] | None = None) -> None:
    """A timm folder (config.json + model.safetensors) that timm and zoo load back.

    ``model_args`` are constructor arguments the folder must carry (e.g. ``img_size``
    of a ViT trained at another resolution); timm passes them back on loading.
    """
    import timm.models

    model_config: dict[str, Any] = {}
    if spec.labels:
        model_config["label_names"] = list(spec.labels)
    data_config = {k: v for k, v in dataclasses.asdict(spec.preprocess).items()
                   if k in IMAGE_PREPROCESS_KEYS and v is not None}
    timm.models.save_for_hf(model, str(folder), model_config=model_config, model_args=model_args or None,
                            safe_serialization=True, data_config=data_config or None)
