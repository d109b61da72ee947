"""Fine-tuning causal language models: data layouts, packing, LoRA (adapter + checked merge), export, parity.

Tiny random Llama / GPT-2 / Qwen2 from tests/tiny.py. Each verification check has its planted
fault beside it: packing that lets attention cross examples, a LoRA merge that drops alpha / r.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import tiny
from zoo.data.labels import IGNORE_INDEX
from zoo.errors import ConfigError, DataError, VerificationError


@pytest.fixture(scope="module")
def folders(tmp_path_factory, registry) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-lms")
    return {arch: tiny.tiny_hf_folder(registry.get(alias), root / arch)
            for arch, alias in (("llama", "smollm2-135m"), ("gpt2", "gpt2"), ("qwen2", "qwen2.5-0.5b"))}


def _spec(folder: Path):
    from zoo.resolver import resolve_folder

    return resolve_folder(folder)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(folder: Path, data: Path | str, **options: Any):
    from zoo.train.data import prepare_data

    return prepare_data(str(data), _spec(folder), **options)


# ---------------------------------------------------------------- data: layouts, targets, bad data


def test_prompt_completion_learns_the_completion_and_its_eos_only(folders, tmp_path):
    rows = [{"prompt": "next a b c =", "completion": " b c d"}] * 4
    data = _prepare(folders["llama"], _write(tmp_path / "d.jsonl", rows))
    first = data.train.rows[0]
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(folders["llama"])
    asked = tokenizer("next a b c =")["input_ids"]  # as generate tokenises a plain prompt
    assert first.ids[:len(asked)] == asked and first.targets[:len(asked)] == [IGNORE_INDEX] * len(asked)
    answer = first.targets[len(asked):]
    assert tokenizer.decode(answer[:-1]) == "b c d" and answer[-1] == 102  # config.json's eos_token_id ([SEP])
    assert first.answered and data.columns == {"prompt": "prompt", "completion": "completion"}


def test_text_rows_learn_every_token_but_the_first(folders, tmp_path):
    data = _prepare(folders["gpt2"], _write(tmp_path / "d.jsonl", [{"text": "hello there world"}] * 3))
    row = data.train.rows[0]
    assert row.targets[0] == IGNORE_INDEX and row.targets[1:] == row.ids[1:] and not row.answered


def test_chat_messages_learn_the_assistant_turns_only(folders, tmp_path):
    chat = [{"role": "user", "content": "say yes"}, {"role": "assistant", "content": "yes indeed"},
            {"role": "user", "content": "and no"}, {"role": "assistant", "content": "no way"}]
    data = _prepare(folders["qwen2"], _write(tmp_path / "d.jsonl", [{"messages": chat}] * 3), max_length=256)
    row = data.train.rows[0]
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(folders["qwen2"])
    # the tiny Qwen2's tokenizer splits into characters and decodes them without spaces
    learned = tokenizer.decode([t for t in row.targets if t != IGNORE_INDEX])
    assert learned == "yesindeed<|im_end|>noway<|im_end|>"
    assert row.answered


@pytest.mark.parametrize("case, expected", [
    ("columns", "no text-generation columns among: title, stars"),
    ("empty", "is empty"),
    ("template", "has chat 'messages' but the model's tokenizer has no chat template"),
    ("turns", "'messages' must be a list of {'role', 'content'} turns"),
    ("long", "leaves no token to learn within --max-length 4"),
])
def test_bad_data_is_one_clear_error(folders, tmp_path, case, expected):
    path = tmp_path / "d.jsonl"
    if case == "empty":
        path.write_text("")
        path = tmp_path / "d.csv"
        path.write_text("prompt,completion\n")
    else:
        row = {"columns": {"title": "x", "stars": 3},
               "template": {"messages": [{"role": "user", "content": "hi"}]},
               "turns": {"messages": [{"role": "user"}]},
               "long": {"prompt": "a very long prompt that fills everything", "completion": " x"}}[case]
        _write(path, [row] * 4)
    folder = folders["qwen2"] if case == "turns" else folders["llama"]
    with pytest.raises(DataError, match=expected.replace("{", r"\{").replace("}", r"\}").replace("'", "'")):
        _prepare(folder, path, max_length=4 if case == "long" else 128)


def test_cli_bad_data_is_one_line_and_writes_nothing(folders, tmp_path, capsys):
    from tests.test_finetune import run_cli

    data = _write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    code, err = run_cli(["finetune", str(folders["llama"]), "--data", str(data), "--out", str(tmp_path / "run")],
                        capsys)
    assert code == 1 and err.startswith("error: ") and "has no chat template" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_exact_match_on_plain_text_is_refused_before_training(folders, tmp_path, capsys):
    # the bug: training ran, then the first evaluation raised KeyError 'val_exact_match' (text rows have no answers)
    from tests.test_finetune import run_cli

    data = _write(tmp_path / "text.jsonl", [{"text": f"hello there world {i}"} for i in range(20)])
    code, err = run_cli(["finetune", str(folders["llama"]), "--data", str(data), "--metric", "exact_match",
                         "--max-steps", "1", "--batch-size", "4", "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and err.startswith("error: --metric exact_match scores answers to prompts")
    assert "use --metric loss or perplexity" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_builtin_next_letter_is_fixed_and_held_out():
    from zoo.tasks import get_task

    first, digest = get_task("text-generation").load_builtin("next-letter")
    again, same = get_task("text-generation").load_builtin("next-letter")
    assert digest == same and first["train"][0] == again["train"][0]
    assert (len(first["train"]), len(first["validation"])) == (900, 100)
    assert not set(first["train"]["prompt"]) & set(first["validation"]["prompt"])
    row = first["validation"][0]
    letters = row["prompt"].split()[1:4]
    assert row["completion"] == " " + " ".join(chr(ord(c) + 1) for c in letters)


# ---------------------------------------------------------------- packing keeps attention inside each example


def _packed(folder: Path):
    from zoo.data.lm import LMExamples, example

    rows = [example([101, 1037 + i, 1038, 1039 + i, 102][:3 + i], [5] * (3 + i), True) for i in range(3)]
    return LMExamples(rows, 0, packed=False).packed_to(64)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_packed_rows_give_each_example_its_own_logits(folders, arch, monkeypatch):
    import transformers

    from zoo.tasks._lm_train import forward_logits
    from zoo.train.packing import check_packing, packing_error

    model = transformers.AutoModelForCausalLM.from_pretrained(folders[arch]).eval()
    examples = _packed(folders[arch])
    assert examples.rows[0].lengths == [3, 4, 5]
    assert packing_error(model, examples, forward_logits) < 1e-5
    check_packing(model, examples, forward_logits)
    # the planted fault: positions numbered across the row, so transformers sees one long sequence
    import zoo.data.lm

    monkeypatch.setattr(zoo.data.lm, "positions", lambda lengths, width: list(range(width)))
    assert packing_error(model, examples, forward_logits) > 1e-3
    with pytest.raises(ConfigError, match="lets attention cross packed examples"):
        check_packing(model, examples, forward_logits)


# ---------------------------------------------------------------- LoRA: the merge is checked against the adapters


def _adapted(folder: Path):
    import transformers

    from zoo.train.config import TrainConfig
    from zoo.train.lora import add_adapters

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    model = add_adapters(model, TrainConfig(lora_r=4, lora_alpha=16.0, lora_targets="q_proj,v_proj,down_proj"))
    with torch.no_grad():  # peft starts B at zero (no change); a trained adapter is not
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def test_lora_merge_keeps_the_adapted_logits_and_a_merge_without_scaling_is_refused(folders, monkeypatch):
    import zoo.train.lora as lora

    sample = {"input_ids": torch.tensor([[101, 2000, 2001, 2002, 102]]), "position_ids": torch.arange(5)[None]}
    merged = lora.merge(_adapted(folders["llama"]), sample)
    assert not any("lora" in n for n, _ in merged.named_parameters())

    def without_scaling(model):  # the planted fault: W + B @ A, alpha / r (here 4) forgotten
        for module in model.modules():
            if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                module.scaling = {k: 1.0 for k in module.scaling}
        return model.merge_and_unload()

    monkeypatch.setattr(lora, "fold", without_scaling)
    with pytest.raises(VerificationError, match="merging the LoRA adapters changed the model's logits"):
        lora.merge(_adapted(folders["llama"]), sample)


def test_lora_options_need_a_rank_and_a_causal_lm(folders, tiny_text_classifier, tmp_path):
    from zoo.train.finetune import finetune

    with pytest.raises(ConfigError, match="--lora-alpha configure LoRA, which --lora-r RANK turns on"):
        finetune(str(folders["llama"]), "builtin:next-letter", lora_alpha=8.0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="--packing and --lora-r train text-generation models"):
        finetune(str(tiny_text_classifier), "builtin:next-letter", packing=True, lora_r=4, out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_lora_run_resumed_from_its_checkpoint_takes_the_uninterrupted_steps(folders, tmp_path):
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import FileSystemReader

    from tests.artifacts import metric_lines
    from zoo.train.finetune import finetune

    # seed 1: a base rebuilt from random numbers (seed 0 reproduces the tiny folder's own) would differ
    options = dict(lora_r=4, lora_dropout=0.0, lora_targets="all-linear", lr=1e-2, max_steps=2, eval_every=1,
                   seed=1, batch_size=8, packing=True, max_length=48, progress=False)
    whole = finetune(str(folders["llama"]), "builtin:next-letter", out=tmp_path / "whole", **options)
    paused = finetune(str(folders["llama"]), "builtin:next-letter", out=tmp_path / "paused", pause_at=1, **options)
    assert not (paused / "run.json").exists() and [line["step"] for line in metric_lines(paused, "train_loss")] == [1]
    # the checkpoint holds the adapters (and their AdamW moments), not the frozen base: resume reloads the base
    stored = FileSystemReader(str(paused / "checkpoints" / "step_1")).read_metadata().state_dict_metadata
    weights = [k for k in stored if k.startswith("model.")]
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    moved = folders["llama"].rename(tmp_path / "moved")  # the base gone: refused before anything starts
    try:
        with pytest.raises(ConfigError, match="--resume of a LoRA run loads the base model's weights again, but"):
            finetune(resume=True, out=paused, progress=False)
    finally:
        moved.rename(folders["llama"])
    finetune(resume=True, out=paused, progress=False)  # the adapter, AdamW's moments, the schedule and step 1
    for key in ("train_loss", "val_loss", "lr"):
        got, expected = metric_lines(paused, key), metric_lines(whole, key)
        assert [(line["step"], line[key]) for line in got] == [(line["step"], line[key]) for line in expected], key
    assert len({line["train_loss"] for line in metric_lines(whole, "train_loss")}) == 2  # the adapter moved
    for file in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        a, b = load_file(whole / file), load_file(paused / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


# ---------------------------------------------------------------- end to end: LoRA run -> export -> torch-free answers


def _answer_loss_onnx(artifact: Path, prompts: list[str], answers: list[str]) -> float:
    """Mean next-token loss of each answer after its prompt, from the exported graph alone (no torch)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((artifact / "manifest.json").read_text())
    layout = manifest["preprocess"]["generation"]["kv_cache"]
    eos = manifest["preprocess"]["generation"]["eos_token_ids"][0]
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    session = ort.InferenceSession(str(artifact / "model.onnx"))
    total = count = 0.0
    for prompt, answer in zip(prompts, answers):
        asked = tokenizer.encode(prompt).ids
        wanted = tokenizer.encode(answer, add_special_tokens=False).ids + [eos]
        ids = np.array([asked + wanted], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
        for i in range(layout["layers"]):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, layout["kv_heads"], 0, layout["head_dim"]),
                                                                np.float32)
        logits = session.run(["logits"], feeds)[0][0, len(asked) - 1:-1]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(wanted)), wanted].sum())
        count += len(wanted)
    return total / count


@pytest.mark.slow
def test_lora_run_exports_its_merged_model_which_answers_better_than_the_base(folders, tmp_path):
    from exporters.onnx import export_onnx
    from zoo.tasks import get_task
    from zoo.train.finetune import finetune

    run = finetune(str(folders["llama"]), "builtin:next-letter", out=tmp_path / "run", lora_r=8,
                   lora_targets="all-linear", lora_dropout=0.0, lr=2e-2, max_steps=12, batch_size=8, packing=True,
                   max_length=64, progress=False)
    record = json.loads((run / "run.json").read_text())
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert set(record["metrics"]["final"]) == {"val_loss", "val_perplexity", "val_exact_match"}
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))
        tuned = export_onnx(str(run), out=tmp_path / "tuned")
        base = export_onnx(str(folders["llama"]), out=tmp_path / "base")
    assert tuned.report.passed and base.report.passed, tuned.report.summary()
    held_out = get_task("text-generation").load_builtin("next-letter")[0]["validation"][:20]
    tuned_loss = _answer_loss_onnx(tuned.path, held_out["prompt"], held_out["completion"])
    base_loss = _answer_loss_onnx(base.path, held_out["prompt"], held_out["completion"])
    # 12 LoRA steps on a random base move its answers' loss by a fraction of a nat (measured 10.33 -> 10.12): the
    # frozen random output layer caps what adapters reach (bench_finetune_lm.py trains a base first for that)
    assert tuned_loss < base_loss - 0.1, (tuned_loss, base_loss)


# ---------------------------------------------------------------- DDP and FSDP take the single process's steps

PARITY_STEPS = 3
PARITY_CASES = [("ddp", False), ("fsdp", False), ("fsdp", True)]  # (strategy, LoRA)


def _lm_trainer(folder: str, strategy: Any, out: Path, lora: bool) -> Any:
    """A Trainer over the tiny Llama on packed builtin:next-letter rows, global batch 8, no dropout."""
    from zoo.resolver import resolve_folder
    from zoo.tasks import get_task
    from zoo.train.config import TrainConfig
    from zoo.train.data import prepare_data
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model

    options = dict(lora_r=4, lora_dropout=0.0, lora_targets="all-linear") if lora else {}
    config = TrainConfig(model=folder, data="builtin:next-letter", out=str(out), batch_size=8, max_steps=PARITY_STEPS,
                         lr=1e-3, warmup=0.3, packing=True, max_length=48, progress=False, **options)
    spec = resolve_folder(Path(folder))
    data = prepare_data(config.data, spec, max_length=48, packing=True)
    torch.manual_seed(0)
    model = strategy.wrap(build_model(spec, data.plan, config))
    model.train()
    return Trainer(model, get_task(spec.task).training_module(model, spec), strategy, data, config, out, spec)


def lm_steps(folder: str, strategy: Any, out: Path, lora: bool) -> dict[str, Any]:
    """Per step: the global batch's mean loss and the gradient norm; then the validation metrics and weights."""
    from zoo.train import batches

    trainer = _lm_trainer(folder, strategy, out, lora)
    plan = batches.epoch_steps(len(trainer.data.train), 8, 1, 0, 0)
    losses, norms = [], []
    for micro in plan[:PARITY_STEPS]:
        norms.append(trainer.train_step(micro))
        total, count = strategy.all_sum(trainer._pending.clone()).tolist()
        trainer._pending.zero_()
        losses.append(total / count)
    weights = {k: v for k, v in strategy.full_state_dict(trainer.model).items() if not lora or "lora" in k}
    return {"losses": losses, "norms": norms, "eval": trainer.evaluate(), "weights": weights}


def lm_parity_worker(out: str, folder: str) -> None:
    """Entry point of each of the 2 launched processes: every case in one launch."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run() -> None:
        from zoo.train.strategies import make_strategy

        strategy = None
        for name, lora in PARITY_CASES:
            strategy = make_strategy(name)
            result = lm_steps(folder, strategy, Path(out) / f"{name}-{lora}", lora)
            if strategy.rank == 0:
                torch.save(result, Path(out) / f"{name}-{lora}.pt")
        strategy.close()

    run()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_and_fsdp_take_the_single_process_steps(folders, tmp_path, monkeypatch):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from zoo.train.strategies import SingleStrategy

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id="lm-parity", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    elastic_launch(config, lm_parity_worker)(str(tmp_path), str(folders["llama"]))
    for lora in (False, True):
        reference = lm_steps(str(folders["llama"]), SingleStrategy(), tmp_path / f"single-{lora}", lora)
        assert reference["losses"][-1] < reference["losses"][0]  # the steps learn: parity is not "nothing moved"
        for name in [n for n, with_lora in PARITY_CASES if with_lora == lora]:
            got = torch.load(tmp_path / f"{name}-{lora}.pt", weights_only=False)
            assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5), name
            assert got["norms"] == pytest.approx(reference["norms"], rel=1e-4), name
            assert got["eval"]["val_loss"] == pytest.approx(reference["eval"]["val_loss"], rel=1e-5), name
            assert got["weights"].keys() == reference["weights"].keys()
            assert max(float((got["weights"][k] - reference["weights"][k]).abs().max())
                       for k in got["weights"]) < 1e-5, name


def test_gradient_checkpointing_gives_the_same_gradients(folders):
    from zoo.resolver import resolve_folder
    from zoo.tasks._lm_train import training_loss
    from zoo.train.config import TrainConfig
    from zoo.train.data import prepare_data
    from zoo.train.model import build_model

    spec = resolve_folder(folders["llama"])
    data = prepare_data("builtin:next-letter", spec, max_length=48, packing=True)
    batch = data.train.batch([0, 1])
    grads = []
    for checkpointing in (False, True):
        config = TrainConfig(model=str(folders["llama"]), gradient_checkpointing=checkpointing)
        model = build_model(spec, data.plan, config).train()
        # transformers 5.x: is_activation_checkpointing (the gradient_ name is a deprecated alias); 4.x: the old one
        name = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else \
            "is_gradient_checkpointing"
        assert getattr(model, name) == checkpointing
        loss, _ = training_loss(model, batch, {k: batch[k] for k in ("input_ids", "position_ids")})
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
