"""One module per model source, each with the same functions:

``is_model_folder``, ``describe``, ``describe_folder``, ``fill_in`` (what the source
knows that a registry entry left out, e.g. the labels of the weights it names),
``create_model``, ``local_folder``, ``save_model``, and ``POSITIONAL_INPUTS`` (how the
model's forward takes its inputs). What differs between tasks lives in ``zoo.tasks``.
"""

from __future__ import annotations

from types import ModuleType

from zoo.spec import ModelSpec


def for_spec(spec: ModelSpec) -> ModuleType:
    """The source module that knows how to build ``spec``."""
    if spec.source == "hf":
        from zoo.sources import hf

        return hf
    if spec.source == "timm":
        from zoo.sources import timm

        return timm
    from zoo.errors import ConfigError

    raise ConfigError(f"unknown source '{spec.source}'; valid sources are hf and timm")
