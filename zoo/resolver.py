"""``resolve(name) -> ModelSpec``: aliases, ``hf:``/``timm:`` ids and local folders.

    zoo info resnet50          # a registry alias
    zoo info hf:ORG/NAME@REV   # any transformers model (needs config.json locally or the hub)
    zoo info timm:convnext_tiny.fb_in1k
    zoo info ./my-model        # save_pretrained / timm / zoo run / zoo artifact folder
    zoo info last.ckpt         # a Lightning checkpoint of a zoo.lightning.ZooModule
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import NameNotFoundError
from zoo.registry import load_registry, unknown_name
from zoo.spec import ModelSpec, Preprocess

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"


def resolve(name: str, *, registries: list[str] | tuple[str, ...] = ()) -> ModelSpec:
    """Turn a model name into a spec without loading any weights."""
    name = str(name).strip()
    if not name:
        raise NameNotFoundError("empty model name; give a registry alias (see 'zoo list'), "
                                "'hf:ORG/NAME', 'timm:ARCH' or a folder")
    path = Path(name).expanduser()
    if path.suffix == ".ckpt" and path.exists():  # a file, or the folder DeepSpeed writes under that name
        return resolve_checkpoint(path)
    if path.is_dir():
        return resolve_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        return resolve_gguf(path)
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
        return task_labels(sources.for_spec(spec).fill_in(spec if spec.inputs else with_source_inputs(spec)))
    if name.startswith(("/", "./", "../", "~")) or path.suffix or path.exists():
        raise NameNotFoundError(f"folder '{name}' does not exist (or is not a directory); "
                                "check the path, or give a registry alias, 'hf:ORG/NAME' or 'timm:ARCH'")
    raise unknown_name(name, registry)


def with_source_inputs(spec: ModelSpec) -> ModelSpec:
    """An entry that lists no ``inputs`` takes them from what its source says of its id (timm's pretrained_cfg,
    the model's config.json), with the preprocessing fields the entry leaves unset; the entry's own fields win."""
    import dataclasses

    from zoo.errors import ModelUnavailableError
    from zoo.sources import hf, timm

    try:
        described = timm.describe(spec.source_id) if spec.source == "timm" else hf.describe(spec.source_id,
                                                                                             spec.revision)
    except ModelUnavailableError as exc:
        raise ModelUnavailableError(f"registry entry '{spec.name}' has no 'inputs' field, so zoo reads them from "
                                    f"the model's config; list them in the entry, or make the config local: "
                                    f"{exc}") from exc
    defaults = Preprocess()
    given = {f.name: getattr(spec.preprocess, f.name) for f in dataclasses.fields(Preprocess)
             if getattr(spec.preprocess, f.name) != getattr(defaults, f.name)}
    preprocess = dataclasses.replace(described.preprocess, **given)
    inputs = described.inputs
    if "input_size" in given:  # the entry resizes the image: the graph input follows
        from zoo.tasks._image import image_inputs

        inputs = image_inputs(preprocess.input_size)
    return dataclasses.replace(spec, inputs=inputs, preprocess=preprocess, arch=spec.arch or described.arch)


def task_labels(spec: ModelSpec) -> ModelSpec:
    """The spec with class names only where its task's outputs carry them. The task decides as it does for a
    transformers config's id2label: an embedder built from a classifier's weights (timm's pretrained_cfg names
    ImageNet's 1000 classes) returns vectors, so its spec has no labels."""
    import dataclasses

    from zoo.tasks import get_task

    if spec.labels is None:
        return spec
    kept = get_task(spec.task).labels_from_config({"id2label": {str(i): n for i, n in enumerate(spec.labels)}})
    return spec if kept else dataclasses.replace(spec, labels=None)


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
    if len(ggufs := sorted(path.glob("*.gguf"))) == 1:  # llama.cpp users keep one model file in a folder
        return resolve_gguf(ggufs[0])
    raise NameNotFoundError(
        f"folder '{path}' is not a model folder: expected config.json from save_pretrained (transformers), "
        "config.json with 'architecture' (timm), run.json (zoo finetune) or manifest.json (zoo export)"
    )


def resolve_gguf(path: Path) -> ModelSpec:
    """A GGUF file, through the transformers folder it is dequantised into once (``zoo.sources.gguf``)."""
    from zoo.sources import gguf

    folder, types = gguf.dequantised_folder(path)
    spec = resolve_folder(folder)
    return _with(spec, name=path.stem, description=f"{spec.description}, {gguf.describe_dequantised(types)} "
                 f"of {path.name}")


def resolve_checkpoint(path: Path) -> ModelSpec:
    """A Lightning ``.ckpt`` of a ZooModule, through the model folder it is rebuilt into once
    (``zoo.sources.ckpt``)."""
    from zoo.sources import ckpt

    return ckpt.model_folder(path)[1]


def _with(spec: ModelSpec, **changes: object) -> ModelSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
