"""Sub-commands whose modules may not exist yet in a given build register here."""

from __future__ import annotations

from importlib import import_module

for _name in ("export", "finetune", "runtime"):
    try:
        import_module(f"zoo.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"zoo.cli.{_name}":
            raise
