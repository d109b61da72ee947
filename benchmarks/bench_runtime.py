"""onnxruntime vs eager PyTorch for exported artifacts: latency and cold start.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_runtime.py [--iterations 50] [--cold-runs 3]

Models: the real all-MiniLM-L6-v2 package (sentence embeddings) and timm resnet18
at 224 px (random weights, saved as a timm folder first, so timm and zoo load the
same files). For each: graph latency at batch 1 and 8 (same arrays for both
engines, after warm-up), and cold start in a fresh process (interpreter start,
imports, load, first prediction on a raw input) of ``zoo.load`` against loading
the same model with transformers / timm. Writes benchmarks/results/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCE = "A man is eating a piece of bread in the park."

# Each cold-start script does everything a fresh service does before its first answer.
COLD_ZOO = """
import sys, zoo
model = zoo.load(sys.argv[1], check_hashes=sys.argv[3] == "1")
model.predict(sys.argv[2])
"""
COLD_TRANSFORMERS = """
import sys, torch, transformers
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
model = transformers.AutoModel.from_pretrained(sys.argv[1]).eval()
batch = tok([sys.argv[2]], padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.inference_mode():
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
"""
COLD_TIMM = """
import sys, torch, timm
from PIL import Image
from timm.data import create_transform, resolve_data_config
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
transform = create_transform(**resolve_data_config(model=model))
with torch.inference_mode():
    probs = model(transform(Image.open(sys.argv[2]).convert("RGB")).unsqueeze(0)).softmax(-1)
"""


def build_artifacts(work: Path) -> dict[str, dict[str, Path]]:
    """MiniLM and resnet18 artifacts (exported through zoo), plus their source folders and a test image."""
    import numpy as np
    import timm
    from PIL import Image

    from exporters.onnx import export_onnx
    from tests.tiny import minilm_dir
    from zoo.resolver import resolve
    from zoo.sources import timm as timm_source

    minilm = minilm_dir()
    resnet_src = work / "resnet18-timm"
    if not resnet_src.exists():
        spec = resolve("timm:resnet18")
        timm_source.save_model(timm.create_model("resnet18", pretrained=False), spec, resnet_src)
    image = work / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(image)
    arts = {}
    for key, src in (("minilm", minilm), ("resnet18", resnet_src)):
        out = work / f"{key}-onnx"
        if not (out / "manifest.json").is_file():
            export_onnx(str(src), out=out)
        arts[key] = {"artifact": out, "source": Path(src)}
    arts["resnet18"]["input"] = image
    return arts


def latency(artifact: Path, iterations: int) -> dict[str, Any]:
    """Both engines with their own default thread pools, then both pinned to one thread.

    On a shared machine the one-thread figures are the steadier comparison of the
    engines themselves; the default figures also show how each copes with contention.
    """
    import torch

    import zoo
    from zoo.runtime.bench import bench

    default_threads = torch.get_num_threads()
    figures = {}
    for label, threads in (("default threads", None), ("1 thread", 1)):
        torch.set_num_threads(default_threads)  # undo the previous setting
        report = bench(zoo.load(artifact, threads=threads), batch_sizes=[1, 8], iterations=iterations,
                       vs_torch=True, threads=threads)
        figures[label] = report.to_dict()
    torch.set_num_threads(default_threads)
    return figures


def cold_start(script: str, args: list[str], runs: int) -> dict[str, float]:
    """Wall time of a fresh interpreter running ``script``; one untimed run first warms the file cache."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"cold-start script failed:\n{done.stderr[-2000:]}")
        if i:
            times.append(elapsed)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def onnxruntime_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where to keep the artifacts (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    arts = build_artifacts(work)
    results: dict[str, Any] = {"machine": machine_info(providers=onnxruntime_providers()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "iterations": args.iterations, "models": {}}
    cold_inputs = {"minilm": (SENTENCE, COLD_TRANSFORMERS, "transformers"),
                   "resnet18": (str(arts["resnet18"].get("input")), COLD_TIMM, "timm")}
    for key, paths in arts.items():
        raw, torch_script, torch_name = cold_inputs[key]
        entry = {"latency": latency(paths["artifact"], args.iterations)}
        zoo_full = cold_start(COLD_ZOO, [str(paths["artifact"]), raw, "1"], args.cold_runs)
        zoo_fast = cold_start(COLD_ZOO, [str(paths["artifact"]), raw, "0"], args.cold_runs)
        torch_cold = cold_start(torch_script, [str(paths["source"]), raw], args.cold_runs)
        entry["cold_start"] = {"zoo.load (sha256 checked)": zoo_full, "zoo.load (sizes only)": zoo_fast,
                               torch_name: torch_cold,
                               "speedup": torch_cold["median_s"] / zoo_full["median_s"],
                               "speedup_sizes_only": torch_cold["median_s"] / zoo_fast["median_s"]}
        results["models"][key] = entry
        print_model(key, entry, torch_name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


def print_model(key: str, entry: dict[str, Any], torch_name: str) -> None:
    cold = entry["cold_start"]
    for label, lat in entry["latency"].items():
        print(f"\n== {key}, {label} ({lat['torch_note']})")
        for t in lat["timings"]:
            print(f"  batch {t['batch_size']:>2} {t['engine']:<12} p50 {t['p50_ms']:8.2f} ms  "
                  f"p90 {t['p90_ms']:8.2f}  p99 {t['p99_ms']:8.2f}  {t['throughput']:8.1f}/s")
        for bs, ratio in lat["speedup"].items():
            print(f"  speed-up at batch {bs}: {ratio:.2f}x (target at batch 8: >= 1.5x)")
    print(f"  cold start: zoo.load {cold['zoo.load (sha256 checked)']['median_s']:.2f} s "
          f"(sizes only {cold['zoo.load (sizes only)']['median_s']:.2f} s) vs {torch_name} "
          f"{cold[torch_name]['median_s']:.2f} s -> {cold['speedup']:.2f}x (sizes only "
          f"{cold['speedup_sizes_only']:.2f}x; target >= 3x)")


if __name__ == "__main__":
    main()
