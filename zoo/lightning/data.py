"""``ZooDataModule(data, batch_size=..., ...)``: zoo's fine-tuning data as a ``LightningDataModule``.

The data is read, split and encoded exactly as ``zoo finetune`` does it (``zoo.train.data.prepare_data``:
builtin:NAME, files, folders, hub names; the data's validation split or a seeded share of the training
rows), for the model of the ``ZooModule`` it is trained with: its preprocessing and image size, its
labels. ``batch_size`` is per process, as in every Lightning ``DataLoader`` (zoo finetune's
``--batch-size`` is the global one). Validation rows are split over the processes as zoo's loop splits
them: every process runs the same number of batches and padding rows are left out of the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from zoo.errors import ConfigError
from zoo.spec import ModelSpec
from zoo.train.config import TrainConfig, normalise_location, validate


class ZooDataModule(pl.LightningDataModule):
    """Training and validation batches of ``data`` for the ZooModule in the same ``Trainer.fit`` call.

    Options as ``zoo finetune`` reads them: ``image_size``, ``text_column``, ``label_column``, ``split``,
    ``val_data``, ``val_fraction``, ``max_length``, ``seed`` (of the validation share); ``num_workers``
    for the training DataLoader.
    """

    def __init__(self, data: str | Path, *, batch_size: int = 32, image_size: int | None = None,
                 text_column: str | None = None, label_column: str | None = None, split: str | None = None,
                 val_data: str | Path | None = None, val_fraction: float = 0.1, max_length: int = 128,
                 seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.data = normalise_location(str(data))
        self.val_data = normalise_location(str(val_data)) if val_data else None
        # the same checks, with the same messages, as zoo finetune's options
        validate(TrainConfig(model="(ZooModule)", data=self.data, batch_size=batch_size, image_size=image_size,
                             val_fraction=val_fraction, max_length=max_length, seed=seed))
        self.batch_size, self.image_size, self.num_workers = batch_size, image_size, num_workers
        self.columns = {"text_column": text_column, "label_column": label_column}
        self.split, self.val_fraction, self.max_length, self.seed = split, val_fraction, max_length, seed
        # recorded as plain values: zoo reads checkpoints with weights_only, which refuses a Path
        self.save_hyperparameters({"data": self.data, "batch_size": batch_size, "image_size": image_size,
                                   **self.columns, "split": split, "val_data": self.val_data,
                                   "val_fraction": val_fraction, "max_length": max_length, "seed": seed,
                                   "num_workers": num_workers})
        self.spec: ModelSpec | None = None
        self.prepared: Any = None

    def prepare_for(self, spec: ModelSpec, new_head: bool) -> Any:
        """Read, split and encode the data for the model of ``spec`` (ZooModule's setup calls this, once)."""
        from zoo.train.data import prepare_data

        if self.prepared is None:
            self.spec = spec
            self.prepared = prepare_data(self.data, spec, split=self.split, val_data=self.val_data,
                                         val_fraction=self.val_fraction, seed=self.seed,
                                         max_length=self.max_length, new_head=new_head, **self.columns)
            if len(self.prepared.train) < self.batch_size:
                raise ConfigError(f"batch_size {self.batch_size} is more than the {len(self.prepared.train)} "
                                  "training rows; use a smaller batch_size")
        return self.prepared

    def _examples(self, split: str) -> Any:
        if self.prepared is None:
            raise ConfigError("ZooDataModule encodes the data for the model of a ZooModule; train them together: "
                              "trainer.fit(ZooModule(MODEL, ...), datamodule=ZooDataModule(DATA, ...))")
        return getattr(self.prepared, split)

    def train_dataloader(self) -> DataLoader:
        examples = self._examples("train")
        # the rows are encoded once, in memory: the loader hands out indices and the examples batch them
        return DataLoader(_Indices(len(examples)), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          collate_fn=examples.batch, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        # already sharded and batched here: Lightning puts no sampler on an iterable data set
        return DataLoader(_ValidationShard(self._examples("val"), self.batch_size, rank, world), batch_size=None)


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class _ValidationShard(IterableDataset):
    """This process's validation batches with their kept-row masks (``zoo.train.batches.eval_shard``)."""

    def __init__(self, examples: Any, batch_size: int, rank: int, world: int):
        self.examples, self.batch_size, self.rank, self.world = examples, batch_size, rank, world

    def _plan(self) -> tuple[list[int], list[bool]]:
        from zoo.train.batches import eval_shard

        return eval_shard(len(self.examples), self.rank, self.world)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], list[bool]]]:
        indices, valid = self._plan()
        for start in range(0, len(indices), self.batch_size):
            yield self.examples.batch(indices[start:start + self.batch_size]), valid[start:start + self.batch_size]
