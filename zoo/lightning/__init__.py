"""PyTorch Lightning on zoo's models, data, tasks and export (the optional ``[lightning]`` extra).

    from lightning.pytorch import Trainer
    from zoo.lightning import ZooDataModule, ZooModule

    module = ZooModule("timm:test_resnet", random_init=True, image_size=32)
    Trainer(max_steps=20, accelerator="cpu", devices=2, strategy="ddp").fit(
        module, datamodule=ZooDataModule("builtin:digits", batch_size=16))

The ``.ckpt`` files Lightning writes from a ZooModule are model sources zoo resolves
(``zoo export last.ckpt --onnx``): see ``zoo.sources.ckpt``. Nothing else in zoo imports this package.
"""

from __future__ import annotations

try:
    import lightning.pytorch  # noqa: F401 - checked here so the error says which extra to install
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    from zoo.errors import ConfigError

    raise ConfigError("zoo.lightning needs PyTorch Lightning: pip install 'zoo-toolkit[lightning]'") from exc

from zoo.lightning.data import ZooDataModule
from zoo.lightning.module import ZooModule

__all__ = ["ZooDataModule", "ZooModule"]
