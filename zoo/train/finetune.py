"""``finetune(model, data, **options) -> run dir``: the Python API behind ``zoo finetune``.

    zoo finetune timm:test_resnet --random-init --data builtin:digits --strategy ddp --nproc 2 --out runs/digits
    zoo finetune --resume --out runs/digits      # continues with the options the run stored

Everything is checked before anything is written (options, model, data,
columns, labels, the run dir). Distributed runs then go through
``launch.spawn`` (torch's elastic launcher); under an outside torchrun each
process runs ``worker.train_and_save`` directly. The checks live in ``preflight.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.train import config as options_module
from zoo.train.config import TrainConfig, check_names, normalise_location, resumed_config
from zoo.train.preflight import ERROR_FILE, check_out, default_out, preflight, prepare, training_spec

__all__ = ["ERROR_FILE", "check_out", "finetune", "prepare", "training_spec"]


def finetune(model: str | Path = "", data: str | Path = "", **options: Any) -> Path:
    """Fine-tune ``model`` (any name ``zoo.resolve`` accepts) on ``data``; return the run dir.

    With ``resume=True`` and ``out=RUN_DIR`` the run continues with the options it
    stored; ``model``, ``data`` and other options may be left out, and one given with
    another value than the run's is refused (ConfigError).
    """
    check_names(options)
    given = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    if "registries" in given:
        given["registries"] = tuple(given["registries"] or ())
    if model:
        given["model"] = normalise_location(model)
    if data:
        given["data"] = normalise_location(data)
    config = _resumed(given) if given.get("resume") else _fresh(given)
    from zoo.train.launch import in_torchelastic, spawn
    from zoo.train.worker import train_and_save

    if in_torchelastic(config):
        train_and_save(config, checked=False)
    elif config.distributed:
        preflight(config)
        spawn(config)
    else:
        train_and_save(config, checked=True, prepared=preflight(config))
    return Path(config.out)


def _fresh(given: dict[str, Any]) -> TrainConfig:
    if given.get("val_data"):
        given["val_data"] = normalise_location(given["val_data"])
    if not given.get("out"):
        given["out"] = str(default_out(str(given.get("model", ""))))
    return TrainConfig(**given)


def _resumed(given: dict[str, Any]) -> TrainConfig:
    if not given.get("out"):
        raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
    from zoo.train.checkpoint import latest_checkpoint, stored_config

    stored = stored_config(latest_checkpoint(Path(given["out"])))
    return resumed_config(stored, given)


def _signature() -> inspect.Signature:
    """finetune(model, data, *, <every option>): derived from TrainConfig for help() and IDEs."""
    params = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str),
              inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str)]
    for f in options_module.options():
        if f.name not in ("model", "data"):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=f.type))
    return inspect.Signature(params, return_annotation=Path)


def _options_help() -> str:
    lines = ["", "Options (the same as the zoo finetune flags):", ""]
    for f in options_module.options():
        if f.name != "model":
            lines.append(f"    {f.name}: {options_module.meta(f).help}")
    return "\n".join(lines)


finetune.__signature__ = _signature()  # type: ignore[attr-defined]
finetune.__doc__ = (finetune.__doc__ or "") + _options_help()
