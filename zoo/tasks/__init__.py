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
import warnings
from functools import lru_cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

from zoo.errors import UnsupportedTaskError, ZooWarning
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

    A folder whose head no task handles (a translation model ...) is refused,
    naming the architecture; a pair of encoders is refused unless a task claims it
    with its own auto class (CLIP and SigLIP: zero-shot-image-classification). A
    masked-LM head is fill-mask; another pretraining head is taken as the encoder
    under it, with a warning that says so.
    """
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = str(config.get("model_type", ""))
    matches = [t for t in all_tasks() if t.claims_hf(architectures, model_type, sentence_transformers)]
    composite = _composite(config, architectures)
    if composite:
        # AutoModel of such a config is not one encoder: its forward wants both towers' (or the decoder's)
        # inputs, so only a task with a head of its own may claim it
        matches = [t for t in matches if t.hf_auto_class != "AutoModel"]
    if matches:
        task = max(matches, key=lambda t: t.hf_priority)
        _warn_dropped_head(task, architectures, sentence_transformers)
        return task
    declared = ", ".join(architectures) or f"model_type '{model_type}' with no architectures"
    what = f" ({composite})" if composite else ""
    raise UnsupportedTaskError(
        f"the model is a {declared}{what}, which no zoo task handles; zoo handles: {', '.join(TASKS)}. "
        "Give a folder saved from one of those heads (e.g. AutoModelForSequenceClassification)")


def _composite(config: dict[str, Any], architectures: list[str]) -> str:
    """What makes a config more than one encoder (two towers, an encoder-decoder), or '' for one encoder."""
    towers = [key.removesuffix("_config") for key in ("text_config", "vision_config", "audio_config")
              if isinstance(config.get(key), dict)]
    if len(towers) > 1:
        return f"a dual encoder of {' and '.join(towers)}"
    if config.get("is_encoder_decoder") and not any(a.endswith("EncoderModel") for a in architectures):
        return "a sequence-to-sequence encoder-decoder"
    return ""


def _warn_dropped_head(task: Task, architectures: list[str], sentence_transformers: bool) -> None:
    """A bare-model task taking a folder saved with a head (BertForMaskedLM) says the head is not used."""
    heads = [a for a in architectures if "For" in a]
    if task.hf_auto_class != "AutoModel" or sentence_transformers or not heads:
        return
    warnings.warn(f"the model is a {', '.join(heads)}: no zoo task runs that head, so zoo takes the encoder under "
                  f"it as {task.name} (its hidden states, the head's weights unused; zoo finetune puts a new head "
                  "on it)", ZooWarning, stacklevel=2)


__all__ = ["all_tasks", "default_timm_task", "get_task", "task_for_hf_config", "task_names"]
