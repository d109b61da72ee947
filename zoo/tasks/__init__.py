"""Tasks: everything that differs between tasks, one module per task.

    from zoo.tasks import get_task
    task = get_task("image-classification")   # every stage asks this object, never compares strings

A task module is ``zoo/tasks/<name with underscores>.py`` defining ``TASK``, an
instance of a ``zoo.tasks.base.Task`` subclass whose ``name`` is the module name
with dashes. Modules are found on disk, so adding a task is adding one file
(plus registry entries and tests). Modules starting with ``_`` hold what several
tasks share (a modality, classification heads); ``preprocess`` and ``results`` are
the torch-free runtime part every task's pre- and postprocessing builds on. No module here imports torch at
import time: the runtime and ``zoo info`` use tasks without it.

Layer: above data, files and plain values; below the sources, the runtime and every stage,
which ask the task and are never called back (README "Architecture"; tests/test_imports.py).
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

from zoo.errors import UnsupportedTaskError
from zoo.spec import TASKS, task_names

if TYPE_CHECKING:  # pragma: no cover
    from zoo.tasks.base import Task


@lru_cache(maxsize=None)
def get_task(name: str) -> Task:
    """The task object for ``name``; an unknown name is one clear error listing the valid ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnsupportedTaskError(f"task '{name}' is not one zoo handles{hint}; valid tasks: "
                                   f"{', '.join(TASKS)}")
    module = import_module(f"zoo.tasks.{name.replace('-', '_')}")
    return module.TASK


def all_tasks() -> list[Task]:
    return [get_task(n) for n in TASKS]


def default_timm_task() -> Task:
    """The task of a bare ``timm:ARCH`` name (a registry entry may name another timm-capable task)."""
    return next(t for t in all_tasks() if t.timm_default)


def task_for_hf_config(config: dict[str, Any], *, sentence_transformers: bool = False) -> Task:
    """The task a transformers ``config.json`` declares (its architecture's head), never a guess.

    A folder whose head no task handles (a causal LM, a question-answering head, an
    audio model before audio tasks existed ...) is refused, naming the architecture.
    """
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = str(config.get("model_type", ""))
    matches = [t for t in all_tasks() if t.claims_hf(architectures, model_type, sentence_transformers)]
    if matches:
        return max(matches, key=lambda t: t.hf_priority)
    declared = ", ".join(architectures) or f"model_type '{model_type}' with no architectures"
    raise UnsupportedTaskError(
        f"the model is a {declared}, which no zoo task handles; zoo handles: {', '.join(TASKS)}. "
        "Give a folder saved from one of those heads (e.g. AutoModelForSequenceClassification)")


__all__ = ["all_tasks", "default_timm_task", "get_task", "task_for_hf_config", "task_names"]
