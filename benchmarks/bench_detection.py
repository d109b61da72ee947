"""Object detection: onnxruntime vs eager PyTorch latency at batch 1 and 4, side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_detection.py [--iterations 10] [--size 384]

Model: DETR with a ResNet-50 backbone, the architecture of the registry's
``detr-resnet-50`` (transformers' own ResNet as backbone, random weights: there is
no download here, and weights do not change the timing), its image processor
resizing the shorter side to ``--size`` (DETR's own 800 is too slow for a
shared 2-core machine). The model is saved as a transformers folder and exported
through zoo, so both engines run the same weights on the same padded arrays (made
by the artifact's own preprocessing from 240x320 pictures; the graph only, no
pre/post-processing). Calls of the two engines take turns, so both see the same
machine load; the ratio (torch p50 / onnxruntime p50) is the figure to read.
Writes benchmarks/results/detection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH_SIZES = (1, 4)
# DETR-R50 as facebook/detr-resnet-50 builds it, with transformers' ResNet instead of timm's
DETR_R50 = dict(backbone_config=dict(model_type="resnet", out_features=["stage4"]), use_timm_backbone=False,
                use_pretrained_backbone=False, num_labels=91)


def build_artifact(work: Path, size: int) -> Path:
    """A random-weight DETR-R50 folder and its verified zoo artifact (reused when already in ``work``)."""
    import torch
    import transformers

    from exporters.onnx import export_onnx

    source, artifact = work / "detr-r50", work / f"detr-r50-{size}-onnx"
    if not (source / "config.json").is_file():
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model("detr", **DETR_R50)
        transformers.AutoModelForObjectDetection.from_config(config).save_pretrained(source)
    longest = size * 4 // 3
    transformers.DetrImageProcessor(size={"shortest_edge": size, "longest_edge": longest}).save_pretrained(source)
    if not (artifact / "manifest.json").is_file():
        export_onnx(str(source), out=artifact)
    return artifact


def latency(artifact: Path, iterations: int) -> dict[str, Any]:
    """Both engines with their default thread pools, then both pinned to one thread (steadier when shared)."""
    import torch

    import zoo
    from zoo.runtime.bench import bench

    default_threads = torch.get_num_threads()
    figures = {}
    for label, threads in (("default threads", None), ("1 thread", 1)):
        torch.set_num_threads(default_threads)
        report = bench(zoo.load(artifact, threads=threads), batch_sizes=list(BATCH_SIZES), iterations=iterations,
                       vs_torch=True, threads=threads)
        figures[label] = report.to_dict()
    torch.set_num_threads(default_threads)
    return figures


def print_figures(figures: dict[str, Any], size: int) -> None:
    for label, lat in figures.items():
        print(f"\n== DETR-R50, shorter side {size} px, {label} ({lat['torch_note']})")
        for t in lat["timings"]:
            print(f"  batch {t['batch_size']} {t['engine']:<12} p50 {t['p50_ms']:9.1f} ms  p90 {t['p90_ms']:9.1f}  "
                  f"{t['throughput']:6.2f} pictures/s")
        for bs, ratio in lat["speedup"].items():
            print(f"  batch {bs}: onnxruntime is {ratio:.2f}x torch eager (torch p50 / onnxruntime p50); "
                  f"max |logits diff| {lat['max_abs_diff'][bs]:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--size", type=int, default=384, help="shorter side the processor resizes to")
    parser.add_argument("--work", type=Path, default=None, help="where to keep the model and artifact")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detection.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-bench-detection-"))
    work.mkdir(parents=True, exist_ok=True)
    artifact = build_artifact(work, args.size)
    figures = latency(artifact, args.iterations)
    results = {"machine": machine_info(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": "DETR-R50 (transformers ResNet-50 backbone, random weights)", "shorter_side": args.size,
               "input": "240x320 pictures, resized and padded by the artifact's preprocessing",
               "iterations": args.iterations, "latency": figures}
    print_figures(figures, args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


if __name__ == "__main__":
    main()
