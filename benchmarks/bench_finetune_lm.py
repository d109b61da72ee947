"""Fine-tuning a tiny causal LM: exact-match on builtin:next-letter (full and LoRA), and zoo's loop against a bare one.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_finetune_lm.py [--steps 150] [--rounds 3]

The model is tests/tiny.py's Llama (2 layers, 32 wide, 4 heads / 2 KV heads, the MiniLM
tokenizer's 30,522-token vocabulary), random-initialised.

1. Full fine-tuning through ``zoo.finetune`` on builtin:next-letter (900 prompts like
   ``next c a j =`` answered `` d b k``): greedy exact-match on the 100 held-out prompts
   before and after. Target >= 0.8.
2. LoRA: adapters on a frozen random model cannot move its tiny random output layer far
   enough, so, as LoRA is used in practice, the base is first trained (fully) on a related
   task, ``prev`` (``prev c a j =`` -> `` b z i``: the letter before each); LoRA (r 8,
   all linear layers) then teaches it ``next``. Exact-match of that base and of the merged
   LoRA model on the held-out ``next`` prompts. Target >= 0.6.
3. Throughput, one process: ``Trainer.train_step`` against the loop a user writes by hand
   (forward with transformers' own shifted loss, backward, clip, AdamW, schedule) on the same
   model and batches; rounds alternate so background load hits both alike; the best round
   of each counts. Target: zoo >= 0.95 x bare samples/s.

Writes benchmarks/results/finetune_lm.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from machine import machine_info
from train_rounds import compare_rounds

BATCH = 32
LETTERS = "abcdefghij"


def tiny_llama(folder: Path) -> Path:
    from tests import tiny
    from zoo.registry import load_registry

    return tiny.tiny_hf_folder(load_registry().get("smollm2-135m"), folder)


def exact_match(model_folder: Path) -> float:
    """Greedy exact-match of a save_pretrained folder on builtin:next-letter's held-out prompts (zoo's metric)."""
    import transformers

    from zoo.resolver import resolve_folder
    from zoo.tasks._lm_train import eval_batch, metrics
    from zoo.train.data import prepare_data

    data = prepare_data("builtin:next-letter", resolve_folder(model_folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_folder).eval()
    batch = data.val.batch(list(range(len(data.val))))
    with torch.no_grad():
        _, _, records = eval_batch(model, batch, {k: batch[k] for k in ("input_ids", "position_ids")},
                                   [True] * len(data.val))
    return metrics(records)["val_exact_match"]


def run(model: Path, data: str, out: Path, steps: int, **options: Any) -> dict[str, Any]:
    from zoo.train.finetune import finetune

    started = time.perf_counter()
    run_dir = finetune(str(model), data, out=out, max_steps=steps, batch_size=BATCH, eval_every=max(1, steps // 3),
                       keep="last", progress=False, **options)
    record = json.loads((run_dir / "run.json").read_text())
    curve = [{k: round(v, 4) for k, v in line.items()} for line in
             map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in line]
    return {"steps": steps, "options": options, "final": record["metrics"]["final"], "curve": curve,
            "seconds": round(time.perf_counter() - started, 1), "run": run_dir}


def prev_letter_file(path: Path) -> Path:
    """The related task LoRA's base is trained on: the letter before each (a -> z wraps to the alphabet's end)."""
    import random

    rows = [(a, b, c) for a in LETTERS for b in LETTERS for c in LETTERS]
    random.Random(1).shuffle(rows)
    before = {c: chr(ord(c) - 1) if c != "a" else "z" for c in LETTERS}
    path.write_text("".join(json.dumps({"prompt": f"prev {' '.join(r)} =",
                                        "completion": " " + " ".join(before[c] for c in r)}) + "\n" for r in rows))
    return path


def exact_matches(work: Path, steps: int) -> dict[str, Any]:
    model = tiny_llama(work / "llama")
    full = run(model, "builtin:next-letter", work / "full", steps, lr=5e-3)
    prev = run(model, str(prev_letter_file(work / "prev.jsonl")), work / "prev", steps, lr=5e-3)
    base = prev["run"] / "model"
    lora = run(base, "builtin:next-letter", work / "lora", steps, lr=1e-2, lora_r=8, lora_targets="all-linear",
               lora_dropout=0.0)
    for record in (full, prev, lora):
        record["run"] = str(record["run"].name)
    return {"full": {"before": exact_match(model), "after": exact_match(work / "full" / "model"), **full},
            "lora": {"base_trained_on_prev": prev, "before": exact_match(base),
                     "after": exact_match(work / "lora" / "model"), **lora}}


# ---------------------------------------------------------------- throughput


def _trainer(model: Path, out: str) -> Any:
    from zoo.tasks import get_task
    from zoo.train.config import TrainConfig
    from zoo.train.loop import Trainer
    from zoo.train.model import build_model
    from zoo.train.preflight import prepare
    from zoo.train.strategies import SingleStrategy

    config = TrainConfig(model=str(model), data="builtin:next-letter", out=out, batch_size=BATCH, max_steps=10_000,
                         lr=5e-3, progress=False)
    spec, data = prepare(config)
    torch.manual_seed(0)
    strategy = SingleStrategy()
    net = strategy.wrap(build_model(spec, data.plan, config)).train()
    return Trainer(net, get_task(spec.task).training_module(net, spec), strategy, data, config, Path(out), spec)


def _bare_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The hand-written loop's loss: the model's own, from a forward without the cache."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                 use_cache=False).loss


def throughput(work: Path, steps: int, rounds: int) -> dict[str, Any]:
    from zoo.train import batches

    model = tiny_llama(work / "llama-throughput")
    zoo_trainer, bare_trainer = _trainer(model, str(work / "z")), _trainer(model, str(work / "b"))
    plan = batches.epoch_steps(len(zoo_trainer.data.train), BATCH, 1, 0, 0)
    compared = compare_rounds(zoo_trainer, bare_trainer, plan, steps, rounds, BATCH, _bare_loss)
    return {"model": "tiny Llama (tests/tiny.py), builtin:next-letter rows", **compared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each fine-tuning run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating zoo / bare throughput rounds")
    parser.add_argument("--throughput-steps", type=int, default=10)
    parser.add_argument("--throughput-only", action="store_true",
                        help="measure throughput again; keep the exact-match figures of the last results file")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / "finetune_lm.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"machine": machine_info(threads=torch.get_num_threads())}
        if args.throughput_only:
            before = json.loads(out.read_text())
            result["exact_match"], result["exact_match_machine"] = before["exact_match"], before["machine"]
        else:
            result["exact_match"] = exact_matches(work, args.steps)
        result["throughput"] = throughput(work, args.throughput_steps, args.rounds)
    result["machine"]["load_average_after"] = list(os.getloadavg())
    out.write_text(json.dumps(result, indent=2))
    em, tp = result["exact_match"], result["throughput"]
    print(f"full: exact-match {em['full']['before']:.2f} -> {em['full']['after']:.2f}; "
          f"LoRA: {em['lora']['before']:.2f} -> {em['lora']['after']:.2f}; "
          f"throughput zoo/bare {tp['ratio']:.3f}")


if __name__ == "__main__":
    main()
