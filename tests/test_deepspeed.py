"""--strategy deepspeed: ZeRO stages with 2 gloo processes on the CPU (DS_ACCELERATOR=cpu), against one process.

One elastic launch runs every in-process case (see ``CASES``) and writes what it saw to files:

- ZeRO-1, ZeRO-2 and ZeRO-3 (also with its parameters offloaded) take the same steps as one process on a
  model without dropout or batch norm (timm test_vit): the same loss at every step and the same
  weights, within float tolerance, with an equal global batch and gradient accumulation;
- ZeRO-2 and ZeRO-3 checkpoint and resume: a fresh engine loading the checkpoint takes the same next
  step as the engine that wrote it; both hold half the optimizer state on each rank;
- bf16 computes in bf16 and still hands back fp32 weights for model/;
- in fp32 the optimizer's master partitions are each rank's share of the module's weights, not a copy.

The end-to-end test runs ``zoo finetune --strategy deepspeed --zero-stage 3 --nproc 2`` (one launch),
sees another process count or strategy refused for ``--resume``, and exports the run with
``zoo export RUN --onnx``. The refusals never launch anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from tests.test_data import image_folder
from tests.test_finetune import cli, run_cli
from tests.test_train_parity import _image_data, max_weight_diff
from zoo.errors import ConfigError

pytestmark = pytest.mark.xdist_group("deepspeed")  # one worker: the module's shared launch/export runs once

pytest.importorskip("deepspeed")

STEPS = 3
TOLERANCE = 1e-5
# case -> TrainConfig options; every case trains timm:test_vit for STEPS steps of 2 micro-batches
CASES = {
    "single": {"strategy": "single"},
    "zero1": {"strategy": "deepspeed", "zero_stage": 1},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
    "zero3-offload": {"strategy": "deepspeed", "zero_stage": 3, "offload": "params"},
    "zero3-bf16": {"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16"},
}


def _trainer(case: str, out: Path) -> Any:
    """A Trainer over test_vit and synthetic images, under the case's strategy (started here)."""
    from zoo.data.labels import LabelPlan
    from zoo.resolver import resolve
    from zoo.tasks import get_task
    from zoo.train.config import TrainConfig
    from zoo.train.data import PreparedData
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model
    from zoo.train.preflight import training_spec
    from zoo.train.worker import start_strategy

    options = CASES[case]
    config = TrainConfig(model="timm:test_vit", data="synthetic", out=str(out), batch_size=8, grad_accum=2,
                         max_steps=STEPS + 1, lr=2e-4, warmup=0.3, image_size=32, progress=False, random_init=True,
                         nproc=1 if case == "single" else 2, **options)
    strategy = start_strategy(config)
    spec = training_spec(resolve(config.model), config)
    train, val = _image_data(torch.Generator().manual_seed(1))
    data = PreparedData("synthetic", "-", spec.task, LabelPlan(("a", "b", "c"), True, "sorted"), train, val, {},
                        "synthetic")
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, data.plan, config))
    model.train()
    return Trainer(model, get_task(spec.task).training_module(model, spec), strategy, data, config, out, spec)


def _step(trainer: Any, micro: list[list[int]]) -> float:
    """One optimizer step; returns its training loss over the global batch."""
    before = trainer._pending.clone()
    trainer.train_step(micro)
    trainer.state.step += 1
    total, count = trainer.strategy.all_sum(trainer._pending - before).tolist()
    return total / count


def run_case(case: str, out: Path) -> dict[str, Any]:
    from zoo.train import batches

    trainer = _trainer(case, out)
    seen: list[str] = []
    module = getattr(trainer.model, "module", trainer.model)  # the engine's module
    module.blocks[0].register_forward_hook(lambda _m, _i, output: seen.append(str(output.dtype)))
    plan = batches.epoch_steps(64, 8, 2, 0, 0)
    losses = [_step(trainer, micro) for micro in plan[:STEPS]]
    moments = [state["exp_avg"] for state in trainer.optimizer.state.values()]
    full = sum(p.numel() for p in module.parameters() if p.requires_grad)
    result = {"losses": losses, "compute": sorted(set(seen)), "optimizer_share": sum(m.numel() for m in moments) / full,
              "weights": trainer.strategy.full_state_dict(trainer.model),
              "master_is_module": _master_is_module(trainer)}
    if case in ("zero2", "zero3"):
        result["resume"] = _resume(case, trainer, plan[STEPS], out)
    return result


def _master_is_module(trainer: Any) -> bool | None:
    """Whether every fp32 master partition the optimizer steps lies in the module's own weight storage."""
    engine = getattr(trainer.strategy, "engine", None)
    if engine is None:  # one process: no DeepSpeed
        return None
    weights = {p.ds_tensor.untyped_storage().data_ptr() if hasattr(p, "ds_tensor") else p.untyped_storage().data_ptr()
               for p in engine.module.parameters()}
    masters = list(engine.client_optimizer.state)  # ZeRO-3 puts them in the param groups only while stepping
    return bool(masters) and all(p.untyped_storage().data_ptr() in weights for p in masters)


def _resume(case: str, trainer: Any, micro: list[list[int]], out: Path) -> dict[str, Any]:
    """Checkpoint after STEPS steps, take one more; a fresh engine loads the checkpoint and takes the same step."""
    from zoo.train import checkpoint

    folder = trainer.save_checkpoint()
    saved = trainer.strategy.full_state_dict(trainer.model)
    going_on = [_step(trainer, micro)]
    fresh = _trainer(case, out)
    state = checkpoint.load(folder, fresh.model, fresh.optimizer)
    fresh.scheduler.load_state_dict(state["scheduler"])
    loaded = fresh.strategy.full_state_dict(fresh.model)
    going_on.append(_step(fresh, micro))
    files = sorted(p.name for p in (folder / "deepspeed" / "zoo").iterdir())
    return {"saved": saved, "loaded": loaded, "next_losses": going_on, "files": files,
            "next_weights": [trainer.strategy.full_state_dict(trainer.model),
                             fresh.strategy.full_state_dict(fresh.model)]}


@record
def deepspeed_worker(out: str) -> None:
    """Entry point of each of the 2 launched processes: every DeepSpeed case, one after the other."""
    import torch.distributed as dist

    for case in CASES:
        if case == "single":
            continue
        result = run_case(case, Path(out) / case)
        rank = dist.get_rank()
        Path(out, f"{case}-share-{rank}.json").write_text(json.dumps(result["optimizer_share"]))
        Path(out, f"{case}-master-{rank}.json").write_text(json.dumps(result["master_is_module"]))
        if rank == 0:
            torch.save(result, Path(out) / f"{case}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    root = tmp_path_factory.mktemp("deepspeed")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id="deepspeed", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    elastic_launch(config, deepspeed_worker)(str(root))
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    return run_case("single", tmp_path_factory.mktemp("single"))


def _got(launched: Path, case: str) -> dict[str, Any]:
    return torch.load(launched / f"{case}.pt", weights_only=False)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("case", ["zero1", "zero2", "zero3", "zero3-offload"])
def test_zero_steps_match_one_process(launched, reference, case):
    got = _got(launched, case)
    assert got["losses"] == pytest.approx(reference["losses"], rel=TOLERANCE)
    assert max_weight_diff(got["weights"], reference["weights"]) <= TOLERANCE
    assert {str(v.dtype) for v in got["weights"].values()} == {"torch.float32"}
    # the steps moved the weights and the loss: parity is not "nothing happened"
    assert reference["losses"][0] != pytest.approx(reference["losses"][-1], rel=1e-4)


def test_weight_and_loss_checks_see_a_planted_difference(reference):
    """Twin of the parity test: a nudged weight or loss is caught at the tolerance used there."""
    nudged = {k: v.clone() for k, v in reference["weights"].items()}
    next(iter(nudged.values())).view(-1)[0] += 1e-4
    assert max_weight_diff(nudged, reference["weights"]) > TOLERANCE
    assert [x * (1 + 1e-4) for x in reference["losses"]] != pytest.approx(reference["losses"], rel=TOLERANCE)


@pytest.mark.distributed
@pytest.mark.slow
def test_zero_shards_the_optimizer_state(launched, reference):
    """Each rank's AdamW holds moments for its half of the weights (test_vit's parameters are all under
    DeepSpeed's persistence threshold, so ZeRO-3 keeps them whole: benchmarks/bench_finetune.py measures
    parameter sharding on a larger ViT)."""
    assert reference["optimizer_share"] == 1.0  # the twin: one process holds every moment
    for case in ("zero2", "zero3"):
        for rank in (0, 1):
            assert 0.45 < json.loads((launched / f"{case}-share-{rank}.json").read_text()) < 0.55


@pytest.mark.distributed
@pytest.mark.slow
def test_fp32_master_partitions_are_the_module_weights(launched):
    """In fp32 the master partitions the optimizer steps are each rank's share of the module's own weights (no
    second fp32 copy); bf16 weights keep a separate fp32 master (the twin)."""
    def shared(case: str) -> list[bool]:
        return [json.loads((launched / f"{case}-master-{rank}.json").read_text()) for rank in (0, 1)]

    for case in ("zero1", "zero2", "zero3"):
        assert shared(case) == [True, True], case
    assert shared("zero3-bf16") == [False, False]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("case", ["zero2", "zero3"])
def test_checkpoint_resumes_into_a_fresh_engine(launched, case):
    resumed = _got(launched, case)["resume"]
    assert max_weight_diff(resumed["saved"], resumed["loaded"]) == 0
    # the optimizer state came back too: the next step is the same step
    assert resumed["next_losses"][0] == pytest.approx(resumed["next_losses"][1], rel=TOLERANCE)
    assert max_weight_diff(*resumed["next_weights"]) <= TOLERANCE
    assert max_weight_diff(resumed["saved"], resumed["next_weights"][0]) > 1e-5  # that step changed the weights
    assert any(name.endswith("optim_states.pt") for name in resumed["files"])  # DeepSpeed's own format


@pytest.mark.distributed
@pytest.mark.slow
def test_bf16_computes_in_bf16_and_saves_fp32_weights(launched, reference):
    got = _got(launched, "zero3-bf16")
    assert got["compute"] == ["torch.bfloat16"] and reference["compute"] == ["torch.float32"]
    assert {str(v.dtype) for v in got["weights"].values()} == {"torch.float32"}
    assert got["losses"] == pytest.approx(reference["losses"], rel=5e-2)
    assert got["losses"] != pytest.approx(reference["losses"], rel=1e-6)  # bf16 really changed the arithmetic


# ---------------------------------------------------------------- end to end: zoo finetune, resume, export


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_finetune_then_export(tiny_timm_folder, tmp_path, capsys):
    """A batch-norm CNN (synced batch norm) under ZeRO-3: the run dir, --resume's refusals, zoo export."""
    import timm

    images = image_folder(tmp_path / "data", per_label=6)
    run = tmp_path / "run"
    argv = ["finetune", str(tiny_timm_folder), "--data", str(images), "--out", str(run), "--strategy", "deepspeed",
            "--zero-stage", "3", "--nproc", "2", "--batch-size", "6", "--image-size", "24", "--max-steps", "4",
            "--checkpoint-every", "2", "--no-progress"]
    code, printed, _ = cli(argv, capsys)
    assert code == 0 and "validation (final, step 4)" in printed
    assert (run / "checkpoints" / "step_2" / "deepspeed" / "zoo").is_dir()
    # DeepSpeed partitions its checkpoint per rank: another process count is refused before any launch
    code, err = run_cli(["finetune", "--resume", "--out", str(run), "--nproc", "1"], capsys)
    assert code == 1 and "this DeepSpeed checkpoint was written by 2" in err and len(err.splitlines()) == 1
    code, err = run_cli(["finetune", "--resume", "--out", str(run), "--strategy", "ddp"], capsys)
    assert code == 1 and "written by --strategy deepspeed" in err and len(err.splitlines()) == 1
    record_ = json.loads((run / "run.json").read_text())
    assert record_["strategy"] == "deepspeed" and record_["world_size"] == 2 and record_["sync_batchnorm"] is True
    model = timm.create_model(f"local-dir:{run / 'model'}").eval()  # model/ is a plain timm folder
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 3)
    code, printed, _ = cli(["export", str(run), "--onnx", "--out", str(tmp_path / "artifact")], capsys)
    assert code == 0 and (tmp_path / "artifact" / "model.onnx").is_file()


# ---------------------------------------------------------------- refused before launch


def test_deepspeed_option_problems_are_refused_together(tmp_path):
    from zoo.train.finetune import finetune

    with pytest.raises(ConfigError) as info:
        finetune("timm:test_vit", "builtin:digits", out=tmp_path / "run", strategy="deepspeed", nproc=2,
                 zero_stage=2, offload="params", precision="fp16")
    message = str(info.value)
    assert "--offload params needs --zero-stage 3" in message and "refuses --precision fp16" in message
    assert "\n" not in message and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"--zero-stage 4 is unknown; valid: 1 \(optimizer state sharded\)"):
        finetune("timm:test_vit", "builtin:digits", out=tmp_path / "run", strategy="deepspeed", zero_stage=4)
    with pytest.raises(ConfigError, match="--zero-stage and --offload configure --strategy deepspeed but "
                                          "--strategy is ddp"):
        finetune("timm:test_vit", "builtin:digits", out=tmp_path / "run", strategy="ddp", zero_stage=3,
                 offload="optimizer")


def test_missing_deepspeed_names_the_extra(monkeypatch):
    import importlib.util

    from zoo.train.config import TrainConfig, validate

    config = TrainConfig(model="timm:test_vit", data="builtin:digits", out="x", strategy="deepspeed", nproc=2)
    validate(config)  # installed: accepted (the twin)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'zoo-toolkit\[deepspeed\]'"):
        validate(config)


@pytest.mark.parametrize("strategy, instead", [("horovod", "use --strategy ddp"), ("fairscale", "use --strategy fsdp")])
def test_horovod_and_fairscale_name_what_to_use_instead(strategy, instead, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["finetune", "timm:test_vit", "--data", "builtin:digits", "--out", str(out),
                         "--strategy", strategy, "--nproc", "2"], capsys)
    assert code == 1 and err.startswith(f"error: --strategy {strategy} is not offered: ") and instead in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_resume_refuses_another_strategy_or_process_count():
    from zoo.train.config import TrainConfig
    from zoo.train.preflight import check_resumed_strategy

    config = TrainConfig(model="m", data="d", out="o", strategy="deepspeed", nproc=2, resume=True)
    check_resumed_strategy(config, {"strategy": "deepspeed", "world_size": 2})  # the same: accepted
    check_resumed_strategy(TrainConfig(strategy="fsdp", nproc=1), {"strategy": "ddp", "world_size": 2})  # DCP
    with pytest.raises(ConfigError, match="written by 4: ZeRO partitions it per rank"):
        check_resumed_strategy(config, {"strategy": "deepspeed", "world_size": 4})
    with pytest.raises(ConfigError, match="--strategy deepspeed cannot resume .* written by --strategy fsdp"):
        check_resumed_strategy(config, {"strategy": "fsdp", "world_size": 2})


def test_gradient_bucket_is_no_larger_than_the_trained_gradients(monkeypatch):
    from zoo.train import deepspeed as zoo_deepspeed
    from zoo.train.config import TrainConfig

    config = TrainConfig(model="m", data="d", out="o", strategy="deepspeed", zero_stage=3, batch_size=8)
    strategy = zoo_deepspeed.DeepSpeedStrategy(config=config)
    model = torch.nn.Sequential(torch.nn.Linear(10, 3), torch.nn.Linear(3, 2))
    model[1].requires_grad_(False)  # frozen weights have no gradients to reduce
    assert strategy.ds_config(model)["zero_optimization"]["reduce_bucket_size"] == 33
    monkeypatch.setattr(zoo_deepspeed, "DEEPSPEED_BUCKET", 20)  # a model larger than the bucket: DeepSpeed's size
    assert strategy.ds_config(model)["zero_optimization"]["reduce_bucket_size"] == 20
