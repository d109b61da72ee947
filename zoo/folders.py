"""A model folder's JSON files (``config.json``, ``preprocessor_config.json`` ...), read the same way by
every layer that describes a model: the sources, and the tasks that know which files their inputs need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError


def read_json(path: Path) -> dict[str, Any]:
    """The file's JSON object; an absent file reads as ``{}`` (most of these files are optional)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained") from exc


def download_command(source_id: str, revision: str | None = None, *, configs_only: bool = False) -> str:
    """The ``hf`` command (huggingface_hub's CLI) that puts a model into the cache; its --include takes one
    pattern per flag."""
    command = f"hf download {source_id}" + (f" --revision {revision}" if revision else "")
    return command + (" --include '*.json' --include '*.txt' --include '*.model'" if configs_only else "")
