"""``resolve(name) -> ModelSpec``: aliases, ``hf:``/``timm:`` ids and local folders.

    zoo info resnet50          # a registry alias
    zoo info hf:ORG/NAME@REV   # any transformers model (needs config.json locally or the hub)
    zoo info timm:convnext_tiny.fb_in1k
    zoo info ./my-model        # save_pretrained / timm / zoo run / zoo artifact folder
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import NameNotFoundError
from zoo.registry import load_registry, unknown_name
from zoo.spec import ModelSpec

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"


def resolve(name: str, *, registries: list[str] | tuple[str, ...] = ()) -> ModelSpec:
    """Turn a model name into a spec without loading any weights."""
    name = str(name).strip()
    if not name:
        raise NameNotFoundError("empty model name; give a registry alias (see 'zoo list'), "
                                "'hf:ORG/NAME', 'timm:ARCH' or a folder")
    path = Path(name).expanduser()
    if path.is_dir():
        return resolve_folder(path)
    if name.startswith("hf:"):
        from zoo.sources import hf

        source_id, revision = _split_revision(name[3:])
        return hf.describe(source_id, revision=revision)
    if name.startswith("timm:"):
        from zoo.sources import timm

        return timm.describe(name[5:])
    registry = load_registry(registries)
    if name in registry:
        from zoo import sources

        # an alias carries what its source knows and the entry left out: the labels of the weights it names
        spec = registry.get(name)
        return sources.for_spec(spec).fill_in(spec)
    if name.startswith(("/", "./", "../", "~")) or path.suffix or path.exists():
        raise NameNotFoundError(f"folder '{name}' does not exist (or is not a directory); "
                                "check the path, or give a registry alias, 'hf:ORG/NAME' or 'timm:ARCH'")
    raise unknown_name(name, registry)


def _split_revision(text: str) -> tuple[str, str | None]:
    source_id, _, revision = text.partition("@")
    if not source_id or source_id.count("/") > 1:
        raise NameNotFoundError(f"'hf:{text}' is not a Hugging Face id; write hf:ORG/NAME or hf:ORG/NAME@REVISION")
    return source_id, revision or None


def resolve_folder(path: Path) -> ModelSpec:
    """A zoo artifact, a zoo run dir, a save_pretrained folder or a timm folder."""
    path = path.resolve()
    if (path / MANIFEST_FILE).is_file():
        from zoo.artifact import read_manifest  # the one reader of manifests: bounded, validated

        spec = read_manifest(path).model_spec()
        return _with(spec, local_path=str(path), origin="artifact")
    if (path / RUN_FILE).is_file():
        run = json.loads((path / RUN_FILE).read_text())
        spec = ModelSpec.from_dict(run["spec"])
        return _with(spec, local_path=str(path / run.get("model_dir", "model")), origin="run")
    from zoo.sources import hf, timm

    for source in (hf, timm):
        if source.is_model_folder(path):
            return source.describe_folder(path)
    raise NameNotFoundError(
        f"folder '{path}' is not a model folder: expected config.json from save_pretrained (transformers), "
        "config.json with 'architecture' (timm), run.json (zoo finetune) or manifest.json (zoo export)"
    )


def _with(spec: ModelSpec, **changes: object) -> ModelSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
