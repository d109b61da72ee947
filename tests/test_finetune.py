"""zoo finetune end to end: run dirs, labels, resume, best checkpoint, options, launch failures, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_data import CONLL, ROWS, image_folder, write_rows
from tests.tiny import NER_LABELS
from zoo.errors import ConfigError, LaunchError


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("imgs") / "data", per_label=6)


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("text") / "train.csv", ROWS * 2, "csv")


def small_image_run(model: Path, data: Path, out: Path, **options) -> Path:
    from zoo.train.finetune import finetune

    settings = dict(batch_size=6, lr=1e-2, image_size=24, progress=False, max_steps=6, checkpoint_every=2)
    return finetune(str(model), str(data), out=out, **{**settings, **options})


def record_of(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def assert_run_dir(run: Path, labels: list[str], world_size: int, strategy: str) -> dict:
    from zoo.resolver import resolve

    record = record_of(run)
    assert record["world_size"] == world_size and record["strategy"] == strategy
    assert record["spec"]["labels"] == labels and record["spec"]["origin"] == "run"
    assert record["data"]["labels"] == labels and len(record["data"]["fingerprint"]) == 64
    assert {"val_loss", "val_accuracy"} <= set(record["metrics"]["final"])
    assert "torch" in record["versions"] and record["config"]["strategy"] == strategy
    assert record["timing"]["samples"] > 0 and record["timing"]["samples_per_s"] > 0
    assert (run / "curves.png").stat().st_size > 1000 and (run / "metrics.jsonl").is_file()
    spec = resolve(str(run))
    assert spec.origin == "run" and spec.local_path == str((run / "model").resolve())
    assert list(spec.labels) == labels
    return record


def metric_lines(run: Path, key: str) -> list[dict]:
    return [line for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in line]


def moved_copy(src: Path, dest: Path) -> Path:
    """A copy of a model folder that a test can delete (the run must not need it any more)."""
    return Path(shutil.copytree(src, dest))


# ---------------------------------------------------------------- distributed, end to end


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_timm_run_dir_loads_in_timm_and_exports(tiny_timm_folder, images, tmp_path):
    import timm
    import torch

    run = small_image_run(tiny_timm_folder, images, tmp_path / "run", strategy="ddp", nproc=2)
    # the folder's own labels (cat, dog, bird), in its order: the data's labels are among them
    record = assert_run_dir(run, ["cat", "dog", "bird"], 2, "ddp")
    assert record["sync_batchnorm"] is True and record["data"]["new_head"] is False
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["label_names"] == ["cat", "dog", "bird"] and config["num_classes"] == 3
    model = timm.create_model(f"local-dir:{run / 'model'}").eval()  # a timm user loads it directly
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 3)
    exporters = pytest.importorskip("exporters.onnx")
    result = exporters.export_onnx(str(run), out=tmp_path / "artifact")
    assert result.report.passed and result.manifest.spec["labels"] == ["cat", "dog", "bird"]


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_text_paused_then_resumed_in_one_process_without_its_base(tiny_text_classifier, text_csv, tmp_path):
    """2 DDP processes stop after a checkpoint; one process finishes the run (DCP reshards) from the run
    dir alone: the base folder is gone, and the same options given again are accepted."""
    import transformers

    from zoo.train.finetune import finetune

    base = moved_copy(tiny_text_classifier, tmp_path / "base")
    options = dict(batch_size=8, max_steps=4, checkpoint_every=2, eval_every=2, progress=False)
    run = tmp_path / "run"
    finetune(str(base), str(text_csv), out=run, strategy="ddp", nproc=2, pause_at=2, **options)
    assert (run / "checkpoints" / "step_2" / "COMPLETE").is_file() and not (run / "run.json").exists()
    shutil.rmtree(base)
    finetune(out=run, resume=True, strategy="single", nproc=1, **options)
    record = assert_run_dir(run, ["negative", "positive"], 1, "single")
    assert record["steps"] == 4
    assert [line["step"] for line in metric_lines(run, "val_loss")] == [2, 4]  # appended, no duplicates
    model = transformers.AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (run / "model" / "tokenizer.json").is_file()


@pytest.mark.distributed
@pytest.mark.slow
def test_failing_worker_is_one_launch_error_and_its_traceback_is_saved(tmp_path):
    """Workers that fail after the launch (here: data gone between the check and the run)."""
    from zoo.train.config import TrainConfig
    from zoo.train.launch import spawn

    config = TrainConfig(model="timm:test_resnet", data="./gone.csv", out=str(tmp_path / "run"),
                         strategy="ddp", nproc=2, random_init=True, progress=False)
    with pytest.raises(LaunchError, match=r"^worker rank [01] of 2 failed: DataError: data file './gone.csv' "
                                          r"does not exist.*worker-error.txt; --debug prints it\)$") as caught:
        spawn(config)
    saved = (tmp_path / "run" / "worker-error.txt").read_text()
    assert "Traceback (most recent call last)" in saved and "zoo/data/files.py" in saved
    assert caught.value.worker_traceback in saved
    # a failed start leaves only that file: the same --out is accepted for the next try
    from zoo.train.preflight import check_out

    check_out(config)


# ---------------------------------------------------------------- one process: resume


@pytest.fixture(scope="session")
def straight_run(tiny_timm_folder, images, tmp_path_factory) -> Path:
    return small_image_run(tiny_timm_folder, images, tmp_path_factory.mktemp("straight") / "run")


def test_resume_from_the_run_dir_alone_ends_with_the_same_weights(tiny_timm_folder, images, straight_run, tmp_path,
                                                                  capsys):
    from zoo.train.finetune import finetune

    base = moved_copy(tiny_timm_folder, tmp_path / "base")
    run = tmp_path / "run"
    small_image_run(base, images, run, pause_at=4)
    assert not (run / "model").exists() and (run / "base" / "config.json").is_file()
    shutil.rmtree(base)  # resuming needs nothing outside the run dir (no hub, no base folder)
    # a checkpoint cut off mid-write: newer, but without its completion marker
    cut = run / "checkpoints" / "step_5"
    cut.mkdir()
    (cut / "__0_0.distcp").write_bytes((run / "checkpoints" / "step_4" / "__0_0.distcp").read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"^--lr 0\.5 differs from the run's 0\.01; --image-size 32 differs "
                                          r"from the run's 24: --resume continues"):
        finetune(out=run, resume=True, lr=0.5, image_size=32)
    code, err = run_cli(["finetune", "--resume", "--out", str(run), "--batch-size", "12"], capsys)
    assert code == 1 and err == "error: --batch-size 12 differs from the run's 6: --resume continues the run with " \
                                "its stored options; leave these out, or start a new run with another --out\n"
    finetune(out=run, resume=True)  # the shortest command line: everything else is the run's
    assert same(tensors(straight_run), tensors(run))
    assert record_of(run)["steps"] == 6 and record_of(run)["config"]["lr"] == 0.01


def test_resume_equality_check_sees_a_different_run(tiny_timm_folder, images, straight_run, tmp_path):
    """Twin of the resume test: another seed ends elsewhere, so equality means something."""
    run = small_image_run(tiny_timm_folder, images, tmp_path / "run", seed=1)
    assert not same(tensors(straight_run), tensors(run))


def test_checkpoint_without_marker_is_never_chosen(tmp_path):
    from zoo.train.checkpoint import MARKER, TRAINER_FILE, latest_checkpoint

    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / TRAINER_FILE).write_text("{}")
        if complete:
            (folder / MARKER).write_text("ok")
    assert latest_checkpoint(tmp_path).name == "step_2"
    (tmp_path / "checkpoints" / "step_4" / MARKER).write_text("ok")  # the twin: once marked, it is chosen
    assert latest_checkpoint(tmp_path).name == "step_4"
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")


def test_resumed_config_keeps_the_stored_options():
    from zoo.train.config import TrainConfig, resumed_config

    stored = TrainConfig(model="/m", data="/d", out="/r", lr=3e-3, batch_size=64, image_size=32, pause_at=10)
    config = resumed_config(stored, {"out": "/r", "resume": True, "nproc": 2, "strategy": "ddp", "lr": 0.003})
    assert (config.lr, config.batch_size, config.image_size) == (3e-3, 64, 32)  # not the defaults
    assert (config.nproc, config.strategy, config.resume, config.pause_at) == (2, "ddp", True, None)
    with pytest.raises(ConfigError, match=r"^--lr 0\.0005 differs from the run's 0\.003"):
        resumed_config(stored, {"lr": 5e-4})


# ---------------------------------------------------------------- one process: best checkpoint, early stopping


def checkpoint_weights(run: Path, step: int) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = run / f"step_{step}.pt"
    dcp_to_torch_save(str(run / "checkpoints" / f"step_{step}"), str(target))
    return torch.load(target, weights_only=False)["model"]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_model_dir_holds_the_best_step_by_the_chosen_metric(tiny_timm_folder, images, tmp_path, keep):
    # a learning rate far too high: the validation accuracy is best early (a later tie is no improvement)
    run = small_image_run(tiny_timm_folder, images, tmp_path / "run", lr=5.0, max_steps=5, eval_every=1,
                          checkpoint_every=None, keep=keep, save_total_limit=1)
    record = record_of(run)
    best = record["metrics"]["best"]["step"]
    assert best < 5 and record["model"]["metric"] == "val_accuracy"
    assert (run / "checkpoints" / f"step_{best}").is_dir()  # kept besides the newest (limit 1)
    assert len(list((run / "checkpoints").iterdir())) == 2
    at_best = checkpoint_weights(run, best)
    if keep == "best":
        assert record["model"]["step"] == best and same(tensors(run), at_best)
    else:  # the twin: the last step's weights, which differ from the best step's
        assert record["model"]["step"] == 5 and not same(tensors(run), at_best)


def test_early_stopping_stops_when_the_metric_stops_improving(tiny_timm_folder, images, tmp_path):
    stopped = small_image_run(tiny_timm_folder, images, tmp_path / "a", lr=5.0, max_steps=12, eval_every=1,
                              early_stopping=1, checkpoint_every=None, metric="loss")
    record = record_of(stopped)
    assert record["stopped_early"] and record["steps"] < 12
    full = small_image_run(tiny_timm_folder, images, tmp_path / "b", lr=5.0, max_steps=12, eval_every=1,
                           checkpoint_every=None, metric="loss", keep="last")
    assert record_of(full)["steps"] == 12


# ---------------------------------------------------------------- labels through finetune -> export -> predict


@pytest.mark.slow
def test_integer_ner_tags_keep_the_models_names_through_export_and_predict(ner_folder, tmp_path):
    """Issue 13: CoNLL integer tags made labels ['0','1','3','5'] and predictions labelled '0'."""
    import transformers

    from zoo.runtime import load
    from zoo.train.finetune import finetune

    data = write_rows(tmp_path / "conll.jsonl", CONLL * 2, "jsonl")
    run = finetune(str(ner_folder), str(data), out=tmp_path / "run", batch_size=4, max_steps=2, progress=False)
    record = record_of(run)
    assert record["spec"]["labels"] == list(NER_LABELS) and record["data"]["new_head"] is False
    config = transformers.AutoConfig.from_pretrained(run / "model")
    assert config.id2label == dict(enumerate(NER_LABELS))
    exporters = pytest.importorskip("exporters.onnx")
    artifact = exporters.export_onnx(str(run), out=tmp_path / "artifact").path
    result = load(artifact).predict("John met someone from Acme in Paris")
    assert result.entities and {e.label for e in result.entities} <= {"PER", "ORG", "LOC"}


def test_string_tags_on_a_ner_model_keep_its_head(ner_folder, tmp_path):
    from zoo.train.finetune import finetune

    rows = [{"tokens": r["tokens"], "ner_tags": [NER_LABELS[t] for t in r["ner_tags"]]} for r in CONLL]
    data = write_rows(tmp_path / "ner.jsonl", rows, "jsonl")
    run = finetune(str(ner_folder), str(data), out=tmp_path / "run", batch_size=4, max_steps=2, progress=False)
    record = record_of(run)
    assert record["spec"]["labels"] == list(NER_LABELS) and record["data"]["new_head"] is False
    final = record["metrics"]["final"]
    # seqeval's entity-level trio, consistent with each other (F1 is their harmonic mean)
    p, r, f1 = final["val_precision"], final["val_recall"], final["val_f1"]
    assert f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-6)
    assert metric_lines(run, "train_loss")  # logged however short the run


def test_head_is_kept_where_labels_match_and_reset_for_a_new_one(ner_folder):
    import torch
    import transformers

    from zoo.data.labels import LabelPlan
    from zoo.resolver import resolve
    from zoo.train.config import TrainConfig
    from zoo.train.model import build_model

    spec, config = resolve(str(ner_folder)), TrainConfig(model=str(ner_folder), data="-")
    base = transformers.AutoModelForTokenClassification.from_pretrained(ner_folder)
    kept = build_model(spec, LabelPlan(NER_LABELS, new_head=False, source="model"), config)
    # seven other names: the same shape, so the source loads the old head; it must start afresh
    new = build_model(spec, LabelPlan(tuple(f"T{i}" for i in range(7)), new_head=True, source="sorted"), config)
    assert torch.equal(kept.classifier.weight, base.classifier.weight)
    assert not torch.equal(new.classifier.weight, base.classifier.weight)
    assert torch.equal(new.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)
    assert new.config.id2label[0] == "T0"


@pytest.fixture(scope="session")
def plain_bert(tmp_path_factory) -> Path:
    """A bare encoder folder (BertModel, no head), as a base or embedding model is saved."""
    import transformers

    from tests.tiny import HF_TINY, minilm_dir

    folder = tmp_path_factory.mktemp("plain-bert")
    config = transformers.AutoConfig.for_model("bert", **HF_TINY["bert"])
    transformers.BertModel(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def test_task_puts_a_token_classification_head_on_a_bare_encoder(plain_bert, tmp_path, capsys):
    data = write_rows(tmp_path / "conll.jsonl", CONLL, "jsonl")
    out = tmp_path / "run"
    code, err = run_cli(["finetune", str(plain_bert), "--data", str(data), "--out", str(out),
                         "--text-column", "tokens", "--label-column", "ner_tags"], capsys)
    assert code == 1 and "holds lists (one tag per word)" in err and "--task token-classification" in err
    code, _ = run_cli(["finetune", str(plain_bert), "--task", "token-classification", "--data", str(data),
                       "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--no-progress"], capsys)
    record = record_of(out)
    assert code == 0 and record["spec"]["task"] == "token-classification"
    assert record["spec"]["labels"] == ["0", "1", "2", "3", "4", "5"] and record["data"]["new_head"] is True


# ---------------------------------------------------------------- options: one definition


def test_every_option_is_a_flag_and_a_keyword_of_finetune():
    import inspect

    from zoo.cli.finetune import finetune_command
    from zoo.train import config as options
    from zoo.train.finetune import finetune

    fields = [f.name for f in options.options()]
    assert list(inspect.signature(finetune).parameters) == fields
    flags = set(inspect.signature(finetune_command).parameters)
    assert {f.name for f in options.options() if options.meta(f).cli} <= flags
    assert {"model_kwargs", "registries"}.isdisjoint(flags)  # Python-only options
    for name in ("keep", "save_total_limit", "weight_decay", "max_grad_norm", "warmup", "scheduler", "grad_accum",
                 "early_stopping", "metric", "task", "new_head", "sync_batchnorm"):
        assert name in flags and f"{name}:" in finetune.__doc__


def test_option_problems_are_reported_together():
    from zoo.train.config import TrainConfig, validate

    bad = TrainConfig(model="m", data="d", lr=0, warmup=1.0, save_total_limit=0, scheduler="step", keep="worst")
    with pytest.raises(ConfigError) as caught:
        validate(bad)
    message = str(caught.value)
    for part in ("--lr 0 must be more than 0", "--warmup 1 must be in [0, 1)",
                 "--save-total-limit 0 must be at least 1", "--scheduler step is unknown; valid: cosine, linear, constant",
                 "--keep worst is unknown; valid: best, last"):
        assert part in message
    validate(TrainConfig(model="m", data="d"))  # the twin: the defaults are valid


def test_unknown_keyword_names_the_close_option():
    from zoo.train.finetune import finetune

    with pytest.raises(ConfigError, match=r"unknown finetune option\(s\): save_limit \(did you mean "
                                          r"save_total_limit\?\)"):
        finetune("m", "d", save_limit=3)


@pytest.mark.parametrize("scheduler, expected", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 2 / 3, 1 / 3]),
    ("cosine", [0.5, 1.0, 1.0, 0.75, 0.25]),
])
def test_schedulers_warm_up_then_follow_their_shape(scheduler, expected):
    """The learning rate each of 5 optimizer steps uses, with 2 warmup steps (peak lr 1)."""
    import torch

    from zoo.train.config import TrainConfig
    from zoo.train.loop import build_optimizer

    config = TrainConfig(model="m", data="d", lr=1.0, warmup=0.4, scheduler=scheduler)
    _, schedule = build_optimizer(torch.nn.Linear(2, 2), config, total_steps=5)
    seen = []
    for _ in range(5):
        seen.append(schedule.get_last_lr()[0])
        schedule.step()
    assert seen == pytest.approx(expected)


def test_weight_decay_spares_biases_and_norm_scales():
    import torch

    from zoo.train.config import TrainConfig
    from zoo.train.loop import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer, _ = build_optimizer(model, TrainConfig(model="m", data="d", weight_decay=0.05), total_steps=2)
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and [p.shape for p in decayed["params"]] == [(4, 3)]
    assert spared["weight_decay"] == 0.0 and len(spared["params"]) == 3  # linear bias, norm weight and bias


def test_clipping_zero_leaves_gradients_alone():
    import torch

    from zoo.train.strategies import SingleStrategy

    def step(max_norm: float) -> torch.Tensor:
        layer = torch.nn.Linear(3, 1, bias=False)
        torch.nn.init.zeros_(layer.weight)
        optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
        (layer(torch.full((1, 3), 100.0)).sum()).backward()
        SingleStrategy().optimizer_step(layer, optimizer, max_norm)
        return layer.weight.detach().abs().sum()

    assert float(step(0.0)) == pytest.approx(300.0)  # unclipped SGD step
    assert float(step(1.0)) == pytest.approx(3 ** 0.5)  # the twin: clipped to norm 1


# ---------------------------------------------------------------- the CLI: errors, summary, pause, --debug


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``zoo ARGV``."""
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code, _, err = cli(argv, capsys)
    return code, err


@pytest.mark.parametrize("case, expected", [
    ("missing", "data file './missing.csv' does not exist"),
    ("column", "--label-column stars: no such column"),
    ("labels", "1 distinct label"),
    ("empty", "is empty"),
    ("nproc", "--nproc 64 is more than the"),
    ("fp16", "fsdp refuses --precision fp16"),
    ("resume", "--resume: no complete checkpoint"),
    ("batch", "--batch-size 5 is the global batch and must divide evenly over 2 processes"),
    ("metric", "--metric f1 is not reported for text-classification; valid: loss, accuracy, macro_f1"),
    ("task", "--task token-classification takes text input but"),
])
def test_cli_errors(case, expected, tiny_text_classifier, tiny_timm_folder, text_csv, tmp_path, capsys,
                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_label = write_rows(tmp_path / "one.csv", [{"text": "x", "label": "a"}] * 4, "csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    data = {"missing": "./missing.csv", "labels": str(one_label), "empty": str(empty)}.get(case, str(text_csv))
    model = tiny_timm_folder if case == "task" else tiny_text_classifier
    extra = {"column": ["--label-column", "stars"], "nproc": ["--strategy", "ddp", "--nproc", "64"],
             "fp16": ["--strategy", "fsdp", "--nproc", "2", "--precision", "fp16"], "resume": ["--resume"],
             "batch": ["--strategy", "ddp", "--nproc", "2", "--batch-size", "5"], "metric": ["--metric", "f1"],
             "task": ["--task", "token-classification"]}.get(case, [])
    out = tmp_path / "run"
    code, err = run_cli(["finetune", str(model), "--data", data, "--out", str(out), *extra], capsys)
    assert code == 1 and err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_without_a_model_or_data_says_what_is_missing(tmp_path, capsys):
    code, err = run_cli(["finetune", "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "no model given" in err and "no --data given" in err and len(err.splitlines()) == 1
    code, err = run_cli(["finetune", "--resume"], capsys)
    assert code == 1 and err == "error: --resume needs --out RUN_DIR: the run to continue\n"


def test_cli_summary_names_time_throughput_and_the_kept_step(tiny_text_classifier, text_csv, tmp_path, capsys):
    """The twin of the error cases: the same command with good inputs trains and reports."""
    out, data = tmp_path / "run", Path(shutil.copy(text_csv, tmp_path / "train.csv"))
    code, printed, _ = cli(["finetune", str(tiny_text_classifier), "--data", str(data), "--out", str(out),
                            "--max-steps", "3", "--batch-size", "8", "--pause-at", "2", "--no-progress"], capsys)
    assert code == 0 and printed.splitlines() == [f"paused at step 2 of 3; checkpoint: {out / 'checkpoints' / 'step_2'}",
                                                  f"continue with: zoo finetune --resume --out {out}"]
    assert metric_lines(out, "train_loss")[-1]["step"] == 2  # logged before pausing
    original = data.read_text()
    data.write_text(original + "an extra row,positive\n")
    code, err = run_cli(["finetune", "--resume", "--out", str(out)], capsys)
    assert code == 1 and "has changed since the run started" in err and len(err.splitlines()) == 1
    data.write_text(original)
    code, printed, _ = cli(["finetune", "--resume", "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and f"run dir: {out}" in printed
    assert "labels: 2 from the model's own label set, the model's head kept" in printed
    assert "validation (final, step 3): loss" in printed
    assert f"{out / 'model'} holds step " in printed and "(--keep best)" in printed
    assert "training samples/s (8 samples in 1 steps)" in printed


def test_debug_prints_the_workers_own_traceback(monkeypatch, capsys, tmp_path, tiny_text_classifier, text_csv):
    from zoo.train import launch

    def failing_spawn(config):
        raise launch.WorkerFailed("worker rank 1 of 2 failed: RuntimeError: boom", "Traceback (most recent call "
                                  "last):\n  File \"worker.py\", line 1\nRuntimeError: boom", None)

    monkeypatch.setattr(launch, "spawn", failing_spawn)
    argv = ["finetune", str(tiny_text_classifier), "--data", str(text_csv), "--out", str(tmp_path / "run"),
            "--strategy", "ddp", "--nproc", "2", "--batch-size", "8"]
    code, err = run_cli(argv, capsys)
    assert code == 1 and err == "error: worker rank 1 of 2 failed: RuntimeError: boom\n"  # one line
    from zoo.cli import main

    with pytest.raises(LaunchError):
        main(["--debug", *argv])
    assert "File \"worker.py\", line 1\nRuntimeError: boom" in capsys.readouterr().err
