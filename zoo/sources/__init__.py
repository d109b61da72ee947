"""One module per model source, each with the same functions:

``is_model_folder``, ``describe``, ``describe_folder``, ``fill_in`` (what the source
knows that a registry entry left out, e.g. the labels of the weights it names),
``create_model``, ``local_folder`` and ``save_model``. What differs between tasks lives in
``zoo.tasks``: the sources ask the task (which auto class, which inputs, which preprocessor), and
the tasks never call back.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

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


def load_processor(spec: ModelSpec) -> Any | None:
    """The task's own preprocessor for ``spec`` (tokenizer, image or feature processor), read from the model's
    local folder (None for a timm:ARCH name, whose preprocessing timm keeps)."""
    from zoo.tasks import get_task

    return get_task(spec.task).load_processor(spec, for_spec(spec).local_folder(spec))
