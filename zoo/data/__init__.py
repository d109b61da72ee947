"""Training data: ``prepare_data(data, spec, ...)`` -> labelled, encoded train/validation examples.

Readers: ``files.py`` (HF datasets: CSV/JSON/JSONL/Parquet, imagefolder,
save_to_disk, hub names; a data file's column of image paths becomes an ``Image``
column in ``images.py``), ``builtin.py`` (``builtin:digits``); interpretation
of columns and labels in ``prepare.py``; batching in ``collate.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zoo.data.prepare import PreparedData, prepare_data

__all__ = ["PreparedData", "prepare_data"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from zoo.data import prepare

        return getattr(prepare, name)
    raise AttributeError(name)
