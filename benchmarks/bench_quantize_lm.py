"""Weight-quantised SmolLM2-135M: zoo's int4 and int8-weights against onnxruntime-genai int4 and transformers fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_quantize_lm.py [--repeats 3] [--threads 1 2]

From the same folder as ``bench_generate.py`` (the packaged SmolLM2-135M-Instruct GGUF, dequantised
by zoo; zoo's fp32 artifact): (a) transformers eager fp32; (b) onnxruntime-genai's int4 CPU model
(``python -m onnxruntime_genai.models.builder -i DIR -o OUT -p int4 -e cpu``); (c) zoo's
``zoo optimize --level int4`` and (d) ``--level int8-weights`` of the fp32 artifact, each written only
if it passed the generative gate on this machine (perplexity on the built-in held-out text, greedy
agreement on the gate's 16 prompts, decode speed against the fp32 parent); the gate's figures come
from the artifacts' manifests, or from the refusal, whose graph is kept (--keep-failed) and timed all
the same. Then, for the record, the planted fault of the tests on the real model:
an int4 LM head with one scale per whole row (block 1024 >= K = 576), through the same gate.

Every engine gets the same prompt ids and makes up to 64 greedy tokens; engines take turns within each
repeat and the median repeat is reported (``bench_generate.measure``). Quantised models may choose other
tokens than fp32; the table says how many of the 64 equal transformers'. Built models are kept in
``--work`` (default ``$ZOO_CACHE/benchmarks/generate``). Writes benchmarks/results/quantize_lm.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_generate import (NEW_TOKENS, ROOT, Engine, build, genai_engine, gguf_file, measure, run,
                            transformers_engine)
import decode_figures
from machine import machine_info

LEVELS = ("int4", "int8-weights")


def quantised(work: Path, parent: Path, rebuild: bool) -> tuple[dict[str, Path], dict[str, Any]]:
    """zoo's int4 and int8-weights graphs through the gate (the artifact's, or the refused graph kept by
    --keep-failed, so that a refused level is still timed) with the gate's figures, and onnxruntime-genai's
    int4 model. A level made from another parent than today's (the fp32 artifact was exported again since),
    or any level with ``rebuild``, is made again."""
    import zoo
    from zoo.errors import GateError

    paths, gate = {}, {}
    for level in LEVELS:
        out, kept = work / f"zoo-{level}", work / f"zoo-{level}-refused"
        if rebuild or _other_parent(out, parent) or _stale_refusal(kept, parent):
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(kept, ignore_errors=True)
        if not (out / "manifest.json").is_file() and not (kept / "refusal.json").is_file():
            print(f"$ zoo optimize {parent} --level {level}", flush=True)
            try:
                zoo.optimize(parent, out=out, level=level, keep_failed=kept,
                             progress=lambda msg: print(f"  {msg}", flush=True))
            except GateError as refusal:
                print(f"  refused: {refusal}", flush=True)
        if (out / "manifest.json").is_file():
            paths[level], gate[level] = out / "model.onnx", {"passed": True, **gate_figures(out)}
        else:
            report = json.loads((kept / "refusal.json").read_text())
            paths[level] = kept / f"{level}.onnx"
            gate[level] = {"passed": False, "checks": [{k: c[k] for k in ("name", "passed", "value", "detail")}
                                                       for c in report["checks"]]}
    folder = Path(build(work)["folder"])
    paths["genai-int4"] = work / "ortgenai-int4"
    if not (paths["genai-int4"] / "genai_config.json").is_file():
        run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o",
             str(paths["genai-int4"]), "-p", "int4", "-e", "cpu"])
    return paths, gate


def _other_parent(artifact: Path, parent: Path) -> bool:
    manifest = artifact / "manifest.json"
    if not manifest.is_file():
        return False
    made_from = json.loads(manifest.read_text())["optimization"]["parent"]["manifest_sha256"]
    return made_from != hashlib.sha256((parent / "manifest.json").read_bytes()).hexdigest()


def _stale_refusal(kept: Path, parent: Path) -> bool:
    """A refused graph kept from before the parent was exported again (a refusal records no parent hash)."""
    refusal = kept / "refusal.json"
    return refusal.is_file() and refusal.stat().st_mtime < (parent / "manifest.json").stat().st_mtime


def graph_engine(graph: Path, parent: Path, threads: int) -> Engine:
    """zoo's runtime loop (Generator, IO binding) over ``graph`` with the parent artifact's tokenizer and record."""
    from exporters.gates import session
    from zoo.artifact import read_manifest
    from zoo.runtime.generate import Generator
    from zoo.tasks import get_task

    manifest = read_manifest(parent)
    loop = Generator(session(graph, threads=threads), manifest,
                     get_task(manifest.task).runtime_preprocessor(parent, manifest))
    tokenizer = loop.tokenizer

    def generate(ids: list[int]) -> tuple[list[int], float, float]:
        start = first = time.perf_counter()
        for step, rows in enumerate(loop.steps([tokenizer.decode(ids)], max_new_tokens=NEW_TOKENS, temperature=0)):
            if step == 0:
                first = time.perf_counter()
        [row] = rows
        return row.new, first - start, time.perf_counter() - first

    return generate


def gate_figures(artifact: Path) -> dict[str, Any]:
    record = json.loads((artifact / "manifest.json").read_text())["optimization"]
    settings = record["recipe"]["quantization"]
    return {**record["gates"]["generative"], "speed": record["gates"]["speed"],
            "recipe": {k: settings[k] for k in ("weights", "block_size", "lm_head", "embedding", "activations")},
            "model_mb": round((artifact / "model.onnx").stat().st_size / 1e6, 1)}


def coarse_head(parent: Path, work: Path) -> dict[str, Any]:
    """The tests' planted fault on the real model: an int4 LM head with one scale for its whole row."""
    from exporters import quantize
    from exporters.optimize import optimize
    from zoo.errors import GateError

    real = quantize.weight_only
    quantize.weight_only = functools.partial(real, head_bits=4, head_block_size=1024)
    try:
        optimize(parent, out=work / "zoo-int4-coarse-head", level="int4")
        return {"refused": False}
    except GateError as refusal:
        return {"refused": True, "checks": [{"name": c.name, "passed": c.passed, "value": c.value,
                                             "detail": c.detail} for c in refusal.report.checks]}
    finally:
        quantize.weight_only = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    parser.add_argument("--work", type=Path, default=cache / "benchmarks" / "generate")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize_lm.json")
    parser.add_argument("--rebuild", action="store_true", help="make zoo's int4 and int8-weights again")
    parser.add_argument("--skip-fault", action="store_true", help="do not run the coarse-head fault on the model")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = build(args.work)
    paths, gate = quantised(args.work, base["zoo"], args.rebuild)

    from tokenizers import Tokenizer

    from bench_generate import PROMPT

    tokenizer = Tokenizer.from_file(str(base["zoo"] / "tokenizer.json"))
    ids = tokenizer.encode(PROMPT).ids
    results: dict[str, Any] = {
        "machine": machine_info(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": gguf_file().name, "prompt_tokens": len(ids), "repeats": args.repeats,
        "gate": gate, "threads": {}}
    for threads in args.threads:
        engines = {"transformers eager fp32": transformers_engine(base["folder"], threads),
                   "onnxruntime-genai int4": genai_engine(paths["genai-int4"], threads),
                   "zoo int4": graph_engine(paths["int4"], base["zoo"], threads),
                   "zoo int8-weights": graph_engine(paths["int8-weights"], base["zoo"], threads)}
        entry = measure(engines, ids, args.repeats)
        reference = entry["tokens"]["transformers eager fp32"]
        entry["tokens_equal_to_fp32"] = {name: _leading_agreement(tokens, reference)
                                         for name, tokens in entry["tokens"].items()}
        entry["ratios"] = ratios(entry["engines"])
        results["threads"][str(threads)] = entry
        print_threads(threads, entry)
    if not args.skip_fault:
        results["coarse_lm_head_fault"] = coarse_head(base["zoo"], args.work)
        print("\ncoarse int4 LM head (one scale per row):",
              "refused" if results["coarse_lm_head_fault"]["refused"] else "NOT refused")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


def _leading_agreement(tokens: list[int], reference: list[int]) -> int:
    """How many greedy tokens equal the reference's before the first that differs."""
    return next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))


def ratios(engines: dict[str, dict[str, Any]]) -> dict[str, float]:
    rate = {name: fig["decode_tokens_per_s"] for name, fig in engines.items()}
    hf, genai = rate["transformers eager fp32"], rate["onnxruntime-genai int4"]
    return {"zoo int4 / onnxruntime-genai int4 (target >= 1.0)": rate["zoo int4"] / genai,
            "zoo int8-weights / transformers fp32 (target >= 3.0)": rate["zoo int8-weights"] / hf,
            "zoo int4 / transformers fp32": rate["zoo int4"] / hf,
            "onnxruntime-genai int4 / transformers fp32": genai / hf}


def print_threads(threads: int, entry: dict[str, Any]) -> None:
    decode_figures.print_threads(
        threads, entry,
        lambda name, fig: f"{fig['new_tokens']} tokens, first {entry['tokens_equal_to_fp32'][name]} as fp32's")


if __name__ == "__main__":
    main()
