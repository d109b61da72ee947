"""zoo.lightning: ZooModule / ZooDataModule under Lightning, and the .ckpt it writes as a zoo model source.

One launch (module fixture) trains ``ZooModule("timm:test_resnet", random_init=True, image_size=32)`` on
``ZooDataModule("builtin:digits", batch_size=16, image_size=32)`` with ``Trainer(accelerator="cpu",
devices=2, strategy="ddp")``; the tests read what each process recorded and export the ``last.ckpt``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.errors import ConfigError

pytestmark = pytest.mark.xdist_group("lightning")  # one worker: the module's shared launch/export runs once

pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4

FIT = """
import json, sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from zoo.lightning import ZooDataModule, ZooModule

out = Path(sys.argv[1])
module = ZooModule("timm:test_resnet", random_init=True, image_size=32)
data = ZooDataModule("builtin:digits", batch_size=16, image_size=32)
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps={steps}, val_check_interval={steps},
                  limit_val_batches=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=out,
                  callbacks=[ModelCheckpoint(dirpath=out, save_last=True)])
trainer.fit(module, datamodule=data)
torch.manual_seed(0)
probe = torch.randn(2, 3, 32, 32)
module.eval()
with torch.no_grad():
    logits = module.model(probe)
(out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps({{
    "world_size": trainer.world_size, "global_step": trainer.global_step,
    "metrics": {{k: float(v) for k, v in trainer.callback_metrics.items()}},
    "weights": float(sum(p.double().sum() for p in module.model.parameters())),
    "probe": probe.tolist(), "logits": logits.tolist()}}))
""".format(steps=STEPS)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lightning-ddp")
    script = out / "fit.py"
    script.write_text(FIT)
    # Lightning's ddp launcher starts the second process by running this script again
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=out, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _ranks(run: Path) -> list[dict]:
    return [json.loads((run / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(autouse=True)
def _own_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE", str(cache))


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_fit_trains_two_processes_in_step_and_logs_the_tasks_metrics(ddp_run):
    ranks = _ranks(ddp_run)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [STEPS, STEPS]
    for name in ("val_loss", "val_accuracy", "val_macro_f1"):  # image classification's loss and metrics
        assert ranks[0]["metrics"][name] == ranks[1]["metrics"][name]
    assert 0.0 <= ranks[0]["metrics"]["val_accuracy"] <= 1.0 and np.isfinite(ranks[0]["metrics"]["val_loss"])
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP keeps every replica the same


@pytest.mark.slow
@pytest.mark.distributed
def test_the_ckpt_records_the_names_that_rebuild_it(ddp_run):
    checkpoint = torch.load(ddp_run / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert {k: hparams[k] for k in ("name_or_run", "random_init", "image_size")} == {
        "name_or_run": "timm:test_resnet", "random_init": True, "image_size": 32}
    record = hparams["zoo"]
    assert record["labels"] == [str(d) for d in range(10)] and record["head_labels"] == record["labels"]
    assert record["spec"]["preprocess"]["input_size"] == [3, 32, 32]


@pytest.mark.slow
@pytest.mark.distributed
def test_zoo_export_of_the_ckpt_verifies_and_holds_the_trained_weights(ddp_run, capsys):
    import onnxruntime as ort

    from zoo.cli import main

    with pytest.raises(SystemExit) as done:
        main(["export", str(ddp_run / "last.ckpt"), "--onnx", "--out", str(ddp_run / "artifact")])
    assert done.value.code == 0, capsys.readouterr().err[-3000:]
    manifest = json.loads((ddp_run / "artifact" / "manifest.json").read_text())
    assert manifest["labels"] == [str(d) for d in range(10)]
    trained = _ranks(ddp_run)[0]
    session = ort.InferenceSession(str(ddp_run / "artifact" / "model.onnx"))
    got = session.run(None, {"pixel_values": np.asarray(trained["probe"], dtype=np.float32)})[0]
    np.testing.assert_allclose(got, np.asarray(trained["logits"]), atol=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_zoo_info_shows_the_ckpt_as_a_checkpoint_and_load_from_checkpoint_rebuilds_the_module(ddp_run, capsys):
    from zoo.cli import main
    from zoo.lightning import ZooModule

    with pytest.raises(SystemExit) as done:
        main(["info", str(ddp_run / "last.ckpt"), "--json"])
    assert done.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["origin"], info["task"], info["labels"][:2]) == ("checkpoint", "image-classification", ["0", "1"])
    module = ZooModule.load_from_checkpoint(ddp_run / "last.ckpt", map_location="cpu").eval()
    trained = _ranks(ddp_run)[0]
    with torch.no_grad():
        logits = module.model(torch.tensor(trained["probe"]))
    torch.testing.assert_close(logits, torch.tensor(trained["logits"]))


@pytest.mark.slow
@pytest.mark.distributed
def test_the_logged_metrics_are_those_of_both_processes_validation_rows_together(ddp_run):
    """Validation ran at the last step, so the checkpoint's weights give the logged values again."""
    from zoo.lightning import ZooDataModule, ZooModule
    from zoo.lightning.data import _ValidationShard

    module = ZooModule.load_from_checkpoint(ddp_run / "last.ckpt", map_location="cpu").eval()
    val = ZooDataModule("builtin:digits", batch_size=16, image_size=32).prepare_for(module.spec, False).val

    def scored(ranks: tuple[int, ...]) -> dict[str, float]:
        module.on_validation_epoch_start()
        with torch.no_grad():
            for rank in ranks:  # limit_val_batches=2 on each process
                for index, batch in zip(range(2), _ValidationShard(val, 16, rank, 2)):
                    module.validation_step(batch, index)
        loss, count = module._val_stats.tolist()
        return {"val_loss": loss / count, **module.task.metrics(module._val_records, module.labels)}

    logged = _ranks(ddp_run)[0]["metrics"]
    both = scored((0, 1))
    assert {k: logged[k] for k in both} == pytest.approx(both, rel=1e-5)
    assert scored((0,))["val_loss"] != pytest.approx(logged["val_loss"], rel=1e-5)  # one process's rows: not it


# ---------------------------------------------------------------- checkpoints zoo cannot use: one line each


def _cli_error(argv: list[str], capsys) -> str:
    from zoo.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code != 0 and "Traceback" not in err
    return err


class _Planted:
    """Unpickling this would create the marker file: weights_only must refuse it before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_ckpt_from_another_lightning_module_names_what_zoo_needs(tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, path)
    err = _cli_error(["info", str(path)], capsys)
    assert "other.ckpt has no 'zoo' hyper-parameter (it does not come from ZooModule)" in err
    assert len(err.strip().splitlines()) == 1


def test_a_ckpt_holding_python_objects_is_refused_without_running_them(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"zoo": _Planted(marker)}}, path)
    err = _cli_error(["export", str(path), "--onnx"], capsys)
    assert "holds Python objects other than tensors and plain values (io.open)" in err
    assert not marker.exists()


def test_damaged_and_sharded_checkpoints_are_one_line_each(tmp_path, capsys):
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    assert "is not a readable torch checkpoint" in _cli_error(["info", str(tmp_path / "cut.ckpt")], capsys)
    (tmp_path / "zero.ckpt" / "checkpoint").mkdir(parents=True)
    assert "convert_zero_checkpoint_to_fp32_state_dict" in _cli_error(["info", str(tmp_path / "zero.ckpt")], capsys)


def test_weights_that_do_not_fit_the_recorded_model_are_refused(tmp_path, capsys):
    from zoo.artifact import sha256_file
    from zoo.resolver import resolve
    from zoo.sources import ckpt

    spec = resolve("timm:test_resnet")
    record = ckpt.record(spec, head_labels=("a", "b"), labels=("a", "b"), model_kwargs={})
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(2, 3)}, "hyper_parameters": {"zoo": record}},
               tmp_path / "edited.ckpt")
    err = _cli_error(["info", str(tmp_path / "edited.ckpt")], capsys)
    assert "its weights do not fit the model its hyper-parameters describe" in err
    assert not list(ckpt._cache_root().glob("*.partial*")), "nothing half-written is left in the cache"
    assert not (ckpt._cache_root() / sha256_file(tmp_path / "edited.ckpt")[:16]).exists()


def test_a_record_of_another_format_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {}, "hyper_parameters": {"zoo": {"format": 99}}}, tmp_path / "future.ckpt")
    assert "format 99; this zoo reads format 1" in _cli_error(["info", str(tmp_path / "future.ckpt")], capsys)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("options, expected", [
    ({"epochs": 3}, "epochs belongs to Lightning: Trainer(max_epochs=...)"),
    ({"batch_size": 8}, "batch_size is an option of the data: ZooDataModule(..., batch_size=...)"),
    ({"lora_r": 8}, "lora_r: ZooModule trains every weight"),
    ({"learning_rate": 0.1}, "unknown option learning_rate"),
    ({"lr": 0}, "--lr 0 must be more than 0"),
    ({"scheduler": "step"}, "--scheduler step is unknown; valid: cosine, linear, constant"),
])
def test_zoomodule_refuses_options_it_does_not_take(options, expected):
    from zoo.lightning import ZooModule

    with pytest.raises(ConfigError) as caught:
        ZooModule("timm:test_resnet", **options)
    assert expected in str(caught.value)


def test_zoomodule_keeps_zoo_finetunes_optimizer_defaults():
    from zoo.lightning import ZooModule
    from zoo.train.config import TrainConfig

    config = ZooModule("timm:test_resnet", lr=1e-3).config
    defaults = TrainConfig()
    assert (config.lr, config.weight_decay, config.max_grad_norm, config.warmup, config.scheduler) == (
        1e-3, defaults.weight_decay, defaults.max_grad_norm, defaults.warmup, defaults.scheduler)


def test_the_two_modules_must_agree_on_the_image_size():
    from zoo.lightning import ZooModule

    with pytest.raises(ConfigError, match=r"ZooModule\(image_size=32\) and ZooDataModule\(image_size=48\) differ"):
        ZooModule("timm:test_resnet", image_size=32).training_spec("builtin:digits", 48)


def test_a_datamodule_without_a_zoomodule_says_how_to_pair_them():
    from zoo.lightning import ZooDataModule

    with pytest.raises(ConfigError, match="train them together"):
        ZooDataModule("builtin:digits", batch_size=16).train_dataloader()


def test_the_datamodules_hyper_parameters_are_plain_values_a_checkpoint_reader_accepts(tmp_path):
    from zoo.lightning import ZooDataModule

    data = ZooDataModule(tmp_path / "train.csv", val_data=tmp_path / "val.csv", batch_size=4)
    torch.save(dict(data.hparams), tmp_path / "hparams.pt")
    loaded = torch.load(tmp_path / "hparams.pt", weights_only=True)
    assert loaded["data"] == str(tmp_path / "train.csv") and loaded["val_data"] == str(tmp_path / "val.csv")


def test_a_zoomodule_fitted_without_a_zoodatamodule_says_how_to_pair_them(tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from zoo.lightning import ZooModule

    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="ZooModule takes its labels and preprocessing from a ZooDataModule"):
        trainer.fit(ZooModule("timm:test_resnet", random_init=True), train_dataloaders=DataLoader(range(4)))


def test_a_process_that_loses_the_race_to_write_the_model_folder_keeps_the_winners(tmp_path):
    from zoo.create import create_model
    from zoo.resolver import resolve
    from zoo.sources import ckpt

    spec = resolve("timm:test_resnet")
    model, _ = create_model(spec, labels=["a", "b"], pretrained=False)
    record = ckpt.record(spec, head_labels=("a", "b"), labels=("a", "b"), model_kwargs={})
    path = tmp_path / "raced.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"zoo": record}}, path)
    folder, final = ckpt.model_folder(path)  # the winner's copy
    written = (folder / ckpt.DONE_FILE).stat().st_mtime_ns
    ckpt._write_folder(torch.load(path, weights_only=True), path, ckpt.read_record(record), final, folder)
    assert (folder / ckpt.DONE_FILE).stat().st_mtime_ns == written
    assert not list(folder.parent.glob("*.partial*")) and final.labels == ("a", "b")
