"""``--pp N``: pipeline parallelism (zoo/train/pipeline.py, zoo/train/stages.py).

One elastic launch of 2 gloo processes runs every case (GPipe: Llama, GPT-2 with tied embeddings and
learned positions; 1F1B: Qwen2 with tied embeddings, timm test_resnet with batch norm) and writes what
it did to files; the single-process references run in the test process, on the same global batches
without dropout: the losses of each step, the gradient norms, the validation loss and the final weights
must agree within 1e-5. The same launch then runs what each ``zoo finetune --pp 2`` worker runs,
paused at step 2 and resumed, and its ``model/`` must equal a single-process run's. The refusals are
checked before anything launches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import tiny
from zoo.errors import ConfigError

pytestmark = pytest.mark.xdist_group("pipeline")  # one worker: the module's shared launch/export runs once

STEPS = 3
# (arch, schedule): what the launched processes run
CASES = [("llama", "gpipe"), ("qwen2", "1f1b"), ("gpt2", "gpipe"), ("resnet", "1f1b")]
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


def _image_trainer(strategy: Any, out: Path, schedule: str = "gpipe") -> Any:
    """A Trainer over timm test_resnet (4 stages, batch norm) on random 64 x 64 images of 3 classes.

    At 32 x 32 the last stage's batch norm sees one position of two images a micro-batch: so few values that
    the rounding differences between the two-stage and the one-process run grew to 4e-4 of the third step's
    gradient norm on an AVX2 CPU (AVX-512 ones happened to stay within 1e-5); at 64 x 64 they agree to 1e-7."""
    from zoo.data.collate import ImageExamples
    from zoo.data.labels import LabelPlan
    from zoo.resolver import resolve
    from zoo.tasks import get_task
    from zoo.train.config import TrainConfig
    from zoo.train.data import PreparedData
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model
    from zoo.train.preflight import training_spec

    config = TrainConfig(model="timm:test_resnet", data="synthetic", out=str(out), batch_size=4, grad_accum=2,
                         max_steps=STEPS, lr=2e-4, warmup=0.3, image_size=64, random_init=True, progress=False,
                         pp=strategy.world_size, pp_schedule=schedule)
    spec = training_spec(resolve(config.model), config)
    gen = torch.Generator().manual_seed(1)

    def examples(n: int) -> ImageExamples:
        return ImageExamples(torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=gen),
                             torch.randint(0, 3, (n,), generator=gen), (0.5,) * 3, (0.5,) * 3)

    plan = LabelPlan(("a", "b", "c"), True, "sorted")
    data = PreparedData("synthetic", "-", spec.task, plan, examples(32), examples(13), {}, "synthetic")
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, plan, config))
    model.train()
    trainer_class = getattr(strategy, "trainer_class", Trainer)
    return trainer_class(model, get_task(spec.task).training_module(model, spec), strategy, data, config, out, spec)


def run_steps(folder: str, arch: str, strategy: Any, out: Path, schedule: str = "gpipe") -> dict[str, Any]:
    """Per step: the global batch's mean loss and the gradient norm; then the validation metrics and weights."""
    from zoo.train import batches

    trainer = _image_trainer(strategy, out, schedule) if arch == "resnet" else _trainer(folder, arch, strategy, out,
                                                                                         schedule)
    plan = batches.epoch_steps(len(trainer.data.train), 4, 2, 0, 0)
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}  # no buffers
    losses, norms = [], []
    for micro in plan[:STEPS]:
        norms.append(trainer.train_step(micro))
        trainer.state.step += 1
        total, count = strategy.all_sum(trainer._pending.clone()).tolist()
        trainer._pending.zero_()
        losses.append(total / count)
    return {"losses": losses, "norms": norms, "eval": trainer.evaluate(), "initial": initial,
            "weights": strategy.full_state_dict(trainer.model)}


def run_options(folder: str) -> dict[str, Any]:
    """The end-to-end run: what ``zoo finetune FOLDER --data builtin:next-letter --packing ...`` is given."""
    return dict(model=folder, data="builtin:next-letter", batch_size=4, grad_accum=2, max_steps=3, lr=1e-3,
                packing=True, max_length=48, progress=False)


def pipeline_worker(out: str, folders: dict[str, str]) -> None:
    """Entry point of each of the 2 launched processes: every case in one launch, then a paused and resumed run."""
    import dataclasses
    from unittest import mock

    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run() -> None:
        from zoo.train.config import TrainConfig
        from zoo.train.pipeline import PipelineStrategy, make_pipeline
        from zoo.train.worker import train_and_save

        for arch, schedule in CASES:
            strategy = make_pipeline("fp32", 2, schedule)
            result = run_steps(folders.get(arch, ""), arch, strategy, Path(out) / f"{arch}-{schedule}", schedule)
            if strategy.rank == 0:
                torch.save(result, Path(out) / f"{arch}-{schedule}.pt")
        # what zoo finetune --strategy ddp --nproc 2 --pp 2 runs in each worker: pause at step 2, resume
        config = TrainConfig(**run_options(folders["llama"]), out=str(Path(out) / "run"), strategy="ddp", nproc=2,
                             pp=2, pp_schedule="1f1b", pause_at=2)
        # both invocations share the launch's process group: the first one must not destroy it, since
        # re-creating a group in the same workers can hang on the store (a real --resume is a new launch)
        with mock.patch.object(PipelineStrategy, "close"):
            train_and_save(config, checked=True)
        train_and_save(dataclasses.replace(config, pause_at=None, resume=True), checked=True)

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
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "resnet"])
def test_two_stages_take_the_single_process_steps(launched, folders, tmp_path, arch):
    from zoo.train.strategies import SingleStrategy

    reference = run_steps(str(folders.get(arch, "")), arch, SingleStrategy(), tmp_path / "single")
    # the steps train: parity is not "nothing moved" (the tiny LMs' loss falls; the ResNet's weights move)
    assert reference["losses"][-1] < reference["losses"][0] or arch == "resnet"
    assert max_diff(reference["initial"], reference["weights"]) > 1e-4
    for schedule in [s for a, s in CASES if a == arch]:
        got = torch.load(launched / f"{arch}-{schedule}.pt", weights_only=False)
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5), schedule
        assert got["norms"] == pytest.approx(reference["norms"], rel=1e-5), schedule
        assert got["eval"]["val_loss"] == pytest.approx(reference["eval"]["val_loss"], rel=1e-5), schedule
        assert got["weights"].keys() == reference["weights"].keys()
        # batch norm too: each stage computes its layers' statistics whole, as one process does
        assert max_diff(got["weights"], reference["weights"]) < 1e-5, schedule


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_paused_and_resumed_pipeline_run_saves_the_single_process_model(launched, folders, tmp_path):
    from safetensors.torch import load_file

    from zoo.train.finetune import finetune

    run = launched / "run"
    record = json.loads((run / "run.json").read_text())
    assert (record["strategy"], record["world_size"], record["steps"]) == ("pipeline", 2, 3)
    single = finetune(**run_options(str(folders["llama"])), out=tmp_path / "single")
    got, reference = load_file(run / "model" / "model.safetensors"), load_file(single / "model" / "model.safetensors")
    assert got.keys() == reference.keys()
    assert max_diff(got, reference) < 1e-5
    assert record["metrics"]["final"]["val_loss"] == pytest.approx(
        json.loads((single / "run.json").read_text())["metrics"]["final"]["val_loss"], rel=1e-5)


# ---------------------------------------------------------------- refusals, before anything launches


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``zoo ARGV``."""
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code), capsys.readouterr().err


def test_combinations_that_make_no_sense_are_refused_together(folders, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(["finetune", str(folders["llama"]), "--data", "builtin:next-letter", "--out", str(out),
                     "--pp", "3", "--strategy", "fsdp", "--nproc", "2", "--pp-schedule", "1f1b", "--lora-r", "4",
                     "--precision", "bf16"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for part in ("--pp 3 runs one pipeline stage per process under --strategy ddp's process group, not "
                 "--strategy fsdp", "--pp 3 does not divide the 2 processes",
                 "--pp-schedule 1f1b needs at least one micro-batch per stage, but --grad-accum 1 < --pp 3",
                 "--pp 3 does not train LoRA adapters", "--pp 3 trains in fp32 only"):
        assert part in err
    assert not out.exists()


def test_each_refusal_has_a_valid_twin():
    from zoo.train.config import TrainConfig, validate

    base = dict(model="m", data="d", strategy="ddp", nproc=2, pp=2)
    validate(TrainConfig(**base))
    validate(TrainConfig(**base, pp_schedule="1f1b", grad_accum=2))
    for bad, expected in [({"strategy": "single", "nproc": 1}, "--pp 2 runs one pipeline stage per process"),
                          ({"nnodes": 2, "rdzv_endpoint": "localhost:29400"},
                           "--pp 2 with 4 processes would need data parallelism"),
                          ({"pp_schedule": "1f1b"}, "--pp-schedule 1f1b needs at least one micro-batch per stage")]:
        with pytest.raises(ConfigError, match=expected):
            validate(TrainConfig(**{**base, **bad}))


def test_a_model_that_cannot_be_split_is_named_with_what_can(folders, tiny_text_classifier):
    from zoo.resolver import resolve, resolve_folder
    from zoo.train.config import TrainConfig
    from zoo.train.stages import check_model

    config = TrainConfig(model="m", data="d", strategy="ddp", nproc=2, pp=2)
    check_model(resolve_folder(folders["llama"]), config)  # the twin: 2 decoder layers, 2 stages
    check_model(resolve("timm:test_resnet"), config)  # 4 stages
    for spec in (resolve_folder(tiny_text_classifier), resolve("timm:test_vit")):
        with pytest.raises(ConfigError, match="--pp splits causal LMs of the llama, qwen2, gpt2 families at "
                                              "decoder layers, timm ResNets at their stages"):
            check_model(spec, config)
    with pytest.raises(ConfigError, match="--pp 3 is more stages than the 2 decoder layers"):
        check_model(resolve_folder(folders["llama"]), TrainConfig(model="m", data="d", pp=3))
    with pytest.raises(ConfigError, match="--pp 5 is more stages than the 4 stages of timm:test_resnet"):
        check_model(resolve("timm:test_resnet"), TrainConfig(model="m", data="d", pp=5))


@pytest.mark.parametrize("layers, stages, expected", [(2, 2, [[0], [1]]), (5, 2, [[0, 1, 2], [3, 4]]),
                                                      (7, 3, [[0, 1, 2], [3, 4], [5, 6]])])
def test_stages_take_contiguous_layers_evenly(layers, stages, expected):
    from zoo.train.stages import stage_layers

    assert [list(r) for r in stage_layers(layers, stages)] == expected


def test_padding_to_a_fixed_width_keeps_every_real_logit(folders):
    """The stages exchange one fixed shape: rows padded to --max-length give the same logits and loss."""
    from zoo.resolver import resolve_folder
    from zoo.tasks._lm_train import forward_logits, training_loss
    from zoo.train.config import TrainConfig
    from zoo.train.data import prepare_data
    from zoo.train.model import build_model
    from zoo.train.pipeline import fixed_width

    spec = resolve_folder(folders["llama"])
    data = prepare_data("builtin:next-letter", spec, max_length=48, packing=False)
    model = build_model(spec, data.plan, TrainConfig(model=str(folders["llama"])))
    batch = data.train.batch([0, 1, 2])
    padded = fixed_width(batch, 48)
    assert padded["input_ids"].shape == (3, 48)
    width = batch["input_ids"].shape[1]
    inputs = {k: b[k] for k in ("input_ids", "position_ids") for b in [batch]}
    wide = {k: padded[k] for k in ("input_ids", "position_ids")}
    with torch.no_grad():
        assert torch.allclose(forward_logits(model, inputs), forward_logits(model, wide)[:, :width], atol=1e-5)
        assert training_loss(model, batch, inputs)[0] == pytest.approx(float(training_loss(model, padded, wide)[0]),
                                                                       rel=1e-5)
