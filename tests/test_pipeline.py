"""``--pp N``: pipeline parallelism (zoo/train/pipeline.py).

One elastic launch of 2 gloo processes runs every case (GPipe and 1F1B; Llama, Qwen2 with tied
embeddings, GPT-2 with tied embeddings and learned positions) and writes what it did to files;
the single-process references run in the test process, on the same global batches without
dropout: the losses of each step, the gradient norms, the validation loss and the final weights
must agree within float tolerance. A second launch runs ``zoo finetune --pp 2`` end to end (pause,
resume, export). The refusals are checked before anything launches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import tiny
from zoo.errors import ConfigError

STEPS = 3
# (arch, schedule): what the launched processes run
CASES = [("llama", "gpipe"), ("llama", "1f1b"), ("qwen2", "1f1b"), ("gpt2", "gpipe")]
NO_DROPOUT = {"gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, registry) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pp-lms")
    return {arch: tiny.tiny_hf_folder(registry.get(alias), root / arch)
            for arch, alias in (("llama", "smollm2-135m"), ("gpt2", "gpt2"), ("qwen2", "qwen2.5-0.5b"))}


def _trainer(folder: str, arch: str, strategy: Any, out: Path, schedule: str = "gpipe") -> Any:
    """A Trainer over a tiny LM on packed builtin:next-letter rows: global batch 4, 2 micro-batches a step."""
    from zoo.resolver import resolve_folder
    from zoo.tasks import get_task
    from zoo.train.config import TrainConfig
    from zoo.train.data import prepare_data
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model

    config = TrainConfig(model=folder, data="builtin:next-letter", out=str(out), batch_size=4, grad_accum=2,
                         max_steps=STEPS, lr=1e-3, warmup=0.3, packing=True, max_length=48, progress=False,
                         pp=strategy.world_size, pp_schedule=schedule, model_kwargs=NO_DROPOUT.get(arch, {}))
    spec = resolve_folder(Path(folder))
    data = prepare_data(config.data, spec, max_length=48, packing=True)
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, data.plan, config))
    model.train()
    trainer_class = getattr(strategy, "trainer_class", Trainer)
    return trainer_class(model, get_task(spec.task).training_module(model, spec), strategy, data, config, out, spec)


def run_steps(folder: str, arch: str, strategy: Any, out: Path, schedule: str = "gpipe") -> dict[str, Any]:
    """Per step: the global batch's mean loss and the gradient norm; then the validation metrics and weights."""
    from zoo.train import batches

    trainer = _trainer(folder, arch, strategy, out, schedule)
    plan = batches.epoch_steps(len(trainer.data.train), 4, 2, 0, 0)
    losses, norms = [], []
    for micro in plan[:STEPS]:
        norms.append(trainer.train_step(micro))
        trainer.state.step += 1
        total, count = strategy.all_sum(trainer._pending.clone()).tolist()
        trainer._pending.zero_()
        losses.append(total / count)
    return {"losses": losses, "norms": norms, "eval": trainer.evaluate(),
            "weights": strategy.full_state_dict(trainer.model)}


def pipeline_worker(out: str, folders: dict[str, str]) -> None:
    """Entry point of each of the 2 launched processes: every case in one launch."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run() -> None:
        from zoo.train.strategies import make_strategy

        strategy = None
        for arch, schedule in CASES:
            strategy = make_strategy("ddp", pp=2, pp_schedule=schedule)
            result = run_steps(folders[arch], arch, strategy, Path(out) / f"{arch}-{schedule}", schedule)
            if strategy.rank == 0:
                torch.save(result, Path(out) / f"{arch}-{schedule}.pt")
        strategy.close()

    run()


@pytest.fixture(scope="module")
def launched(folders, tmp_path_factory) -> Path:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    out = tmp_path_factory.mktemp("pp-parity")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id="pp-parity", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    elastic_launch(config, pipeline_worker)(str(out), {k: str(v) for k, v in folders.items()})
    return out


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_two_stages_take_the_single_process_steps(launched, folders, tmp_path, arch):
    from zoo.train.strategies import SingleStrategy

    reference = run_steps(str(folders[arch]), arch, SingleStrategy(), tmp_path / "single")
    assert reference["losses"][-1] < reference["losses"][0]  # the steps learn: parity is not "nothing moved"
    for schedule in [s for a, s in CASES if a == arch]:
        got = torch.load(launched / f"{arch}-{schedule}.pt", weights_only=False)
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5), schedule
        assert got["norms"] == pytest.approx(reference["norms"], rel=1e-4), schedule
        assert got["eval"]["val_loss"] == pytest.approx(reference["eval"]["val_loss"], rel=1e-5), schedule
        assert got["weights"].keys() == reference["weights"].keys()
        assert max(float((got["weights"][k] - reference["weights"][k]).abs().max())
                   for k in got["weights"]) < 1e-5, schedule
