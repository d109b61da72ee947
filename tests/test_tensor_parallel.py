"""``zoo finetune --tp N``: which modules are split how, the refusals before launch, and parity with one process.

Tiny random Llama and Qwen2 (tests/tiny.py's configs with 40 MLP units, so that 2 shards divide them).
The parity test is one 4-process gloo launch, a 2-D mesh of 2 data-parallel groups x 2 tensor-parallel shards
(FSDP over data, TP inside each group): each process runs ``zoo.finetune`` as under torchrun. It trains the Llama
only, to keep the suite's time (Qwen2, whose q/k/v have biases and whose LM head is tied to the embeddings, passed
the 2-process test when it was written). With one group (``--nproc`` equal to ``--tp``) the strategy is the same
code with FSDP left out; that launch passed the same assertions when the 2-D mesh was added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import tiny
from zoo.errors import ConfigError

ARCHS = ("llama", "qwen2")
# every case trains 3 steps and evaluates after each, so metrics.jsonl holds each step's train and val loss
OPTIONS = dict(data="builtin:next-letter", max_steps=3, eval_every=1, batch_size=8, max_length=48, packing=True,
               lr=1e-3, keep="last", checkpoint_every=10, progress=False)


def _folder(arch: str, root: Path, intermediate_size: int = 40) -> Path:
    import transformers

    config = transformers.AutoConfig.for_model(arch, **{**tiny.HF_TINY[arch], "intermediate_size": intermediate_size})
    torch.manual_seed(0)
    folder = root / f"{arch}-{intermediate_size}"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny.minilm_dir()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _folder("llama", tmp_path_factory.mktemp("tp-lms"))


def _meta(arch: str, **overrides: Any) -> Any:
    import transformers

    config = transformers.AutoConfig.for_model(arch, **{**tiny.HF_TINY.get(arch, {}), **overrides})
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


# ---------------------------------------------------------------- the plan: which module gets which style


@pytest.mark.parametrize("arch", ARCHS)
def test_the_plan_splits_attention_and_mlp_projections_of_every_layer(arch):
    from zoo.train.tensor_parallel import sharding_plan, split_problems

    plan = sharding_plan(_meta(arch, intermediate_size=40))
    expected = {f"model.layers.{i}.{part}": style for i in range(2) for part, style in (
        ("self_attn.q_proj", "colwise"), ("self_attn.k_proj", "colwise"), ("self_attn.v_proj", "colwise"),
        ("self_attn.o_proj", "rowwise"), ("mlp.gate_proj", "colwise"), ("mlp.up_proj", "colwise"),
        ("mlp.down_proj", "rowwise"))}
    assert plan == expected  # embeddings, norms and the LM head stay whole
    assert split_problems(_meta(arch, intermediate_size=40), 2) == []


def test_models_that_do_not_split_as_llama_are_named_with_the_reason():
    from zoo.train.tensor_parallel import split_problems

    gpt2 = split_problems(_meta("gpt2"), 2)
    assert len(gpt2) == 1
    assert gpt2[0].startswith("the gpt2 architecture does not split as Llama does (transformers' plan for it: none)")
    # Qwen3's plan adds per-head q/k norms whose gradients need an all-reduce the Llama plan does not do
    qwen3 = split_problems(_meta("qwen3", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, intermediate_size=40, vocab_size=64), 2)
    assert "self_attn.q_norm: replicated_with_grad_allreduce" in qwen3[0]
    # 4 heads, 2 key/value heads and 37 MLP units: 3 shards divide none, 2 shards only the heads
    assert split_problems(_meta("llama"), 3) == ["its 4 attention heads do not divide by --tp 3",
                                                 "its 2 key/value heads do not divide by --tp 3",
                                                 "its 37 MLP hidden units (intermediate_size) do not divide by --tp 3"]
    assert split_problems(_meta("llama"), 2) == ["its 37 MLP hidden units (intermediate_size) do not divide by --tp 2"]


# ---------------------------------------------------------------- refusals: all at once, before anything starts


def test_every_refusal_comes_at_once_before_launch(tiny_text_classifier, tmp_path, capsys):
    from tests.test_finetune import run_cli
    from zoo.train.finetune import finetune

    with pytest.raises(ConfigError) as caught:
        finetune(str(_folder("llama", tmp_path, 37)), "builtin:next-letter", tp=2, nproc=3, strategy="ddp",
                 lora_r=4, out=tmp_path / "a")
    assert str(caught.value).split("; ") == [
        "--tp 2 needs a multiple of 2 processes (each group of 2 holds one split model), but --nproc 3 --nnodes 1 "
        "start 3", "give --nproc 2 (or 4: FSDP shards the data dimension across the groups)",
        "--tp combines with FSDP only (data x tp mesh), not --strategy ddp", "leave --strategy out or give "
        "--strategy fsdp",
        "--tp does not train LoRA adapters (peft's layers wrap the projections --tp splits)",
        "leave --lora-r out, or train LoRA with --strategy ddp or fsdp",
        "llama-37: its 37 MLP hidden units (intermediate_size) do not divide by --tp 2"]
    capsys.readouterr()  # the folder's save_pretrained progress
    code, err = run_cli(["finetune", str(tiny_text_classifier), "--data", "builtin:next-letter", "--tp", "2",
                         "--nproc", "2", "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--tp splits causal language models, but" in err and "is a text-classification model" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- 4 processes (2 x 2 mesh) take the one-process steps


def tp_worker(out: str, folder: str) -> None:
    """Entry point of each of the 4 launched processes, running ``zoo.finetune`` as ``torchrun -m zoo`` would."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run() -> None:
        import os

        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        from zoo.train import tensor_parallel
        from zoo.train.finetune import finetune

        wrap, held = tensor_parallel.TensorParallelStrategy.wrap, {}

        def spying(self: Any, model: torch.nn.Module) -> torch.nn.Module:  # what this rank holds of each weight
            model = wrap(self, model)
            held.update({name: (tuple(p.to_local().shape) if isinstance(p, DTensor) else None, tuple(p.shape))
                         for name, p in model.named_parameters()})
            return model

        tensor_parallel.TensorParallelStrategy.wrap = spying
        # both runs share one process group, as a torchrun worker has one: leaving it and joining again in the
        # same process reuses the launcher's store keys and can hang
        tensor_parallel.TensorParallelStrategy.close = lambda self: None
        # stopped after step 1 with a checkpoint of the split weights, then resumed from it
        finetune(folder, out=Path(out) / "run", tp=2, nproc=4, pause_at=1, **OPTIONS)
        finetune(out=Path(out) / "run", resume=True, progress=False)
        dist.destroy_process_group()
        (Path(out) / f"held-{os.environ['RANK']}.json").write_text(json.dumps(held))

    run()


def _steps(run: Path) -> list[tuple[int, float, float | None]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line.get("train_loss"), line.get("val_loss")) for line in lines]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_groups_of_two_processes_splitting_the_model_take_the_one_process_steps(llama, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from zoo.train.finetune import finetune

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=4, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id="tp-parity", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    elastic_launch(config, tp_worker)(str(tmp_path / "tp"), str(llama))
    split, whole = tmp_path / "tp" / "run", finetune(str(llama), out=tmp_path / "whole", **OPTIONS)
    got, expected = _steps(split), _steps(whole)
    assert [s for s, _, _ in got] == [1, 1, 2, 2, 3, 3]
    assert expected[-1][2] < expected[1][2]  # the steps learn: parity is not "nothing moved"
    for column in (1, 2):  # train losses, then val losses
        values, reference = ([row[column] for row in rows if row[column] is not None] for rows in (got, expected))
        assert values == pytest.approx(reference, rel=1e-5) and len(values) == 3
    record = json.loads((split / "run.json").read_text())
    assert record["strategy"] == "fsdp+tp" and record["config"]["tp"] == 2
    # model/ is whole (every shard gathered): the same save_pretrained folder one process writes
    a, b = load_file(split / "model" / "model.safetensors"), load_file(whole / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    # each process held a quarter of every split weight (its tp half: rows for colwise, columns for rowwise; then
    # FSDP's half of that along rows) and half of every whole one (FSDP's rows)
    for rank in range(4):
        held = json.loads((tmp_path / "tp" / f"held-{rank}.json").read_text())
        q, o = held["model.layers.0.self_attn.q_proj.weight"], held["model.layers.0.self_attn.o_proj.weight"]
        assert q == [[8, 32], [32, 32]] and o == [[16, 16], [32, 32]], rank
        assert held["model.layers.1.mlp.down_proj.weight"] == [[16, 20], [32, 40]]
        assert held["model.norm.weight"] == [[16], [32]]
