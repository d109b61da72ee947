"""onnxruntime vs eager PyTorch for audio classifiers, on 1 s and 10 s clips, side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_audio.py [--iterations 20] [--layers 12]

Models: wav2vec2-base and the Audio Spectrogram Transformer (AST, base size: 768
wide, 12 layers, 128 mel bins x 1024 frames), both random-initialised from their
published configurations (no download), saved as save_pretrained folders with
their feature extractors and exported through zoo. For each clip length both
engines get the same graph arrays (made by the artifact's own numpy
preprocessing) and take turns call by call, so machine load hits them alike;
the figure that matters is the ratio torch p50 / onnxruntime p50. wav2vec2's
input grows with the clip; AST pads every clip to its 10.24 s window, so its two
lengths cost the same. Writes benchmarks/results/audio.json.
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

SECONDS = (1.0, 10.0)


def build_folders(work: Path, layers: int) -> dict[str, Path]:
    """wav2vec2-base and AST-base shaped classifiers (random weights, 4 labels) with feature extractors."""
    import transformers

    labels = {i: name for i, name in enumerate(("tone", "chord", "chirp", "noise-bursts"))}
    configs = {
        "wav2vec2-base": (transformers.Wav2Vec2Config(num_hidden_layers=layers, id2label=labels),
                          transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False)),
        "ast-base": (transformers.ASTConfig(num_hidden_layers=layers, id2label=labels),
                     transformers.ASTFeatureExtractor()),
    }
    folders = {}
    for name, (config, extractor) in configs.items():
        folder = work / name
        if not (folder / "config.json").is_file():
            transformers.set_seed(0)
            model = transformers.AutoModelForAudioClassification.from_config(config)
            model.save_pretrained(folder)
            extractor.save_pretrained(folder)
        folders[name] = folder
    return folders


def export(folder: Path) -> Path:
    from exporters.onnx import export_onnx

    out = folder.with_name(folder.name + "-onnx")
    if not (out / "manifest.json").is_file():
        export_onnx(str(folder), out=out)
    return out


def latency(artifact: Path, iterations: int, threads: int | None) -> dict[str, Any]:
    """Per clip length: p50 of both engines on the same arrays, their ratio, and the outputs' max abs diff."""
    import numpy as np

    import zoo
    from zoo.runtime.bench import Timing, time_calls
    from zoo.runtime.torch_baseline import torch_runner
    from zoo.tasks._audio import synthetic_clip

    model = zoo.load(artifact, threads=threads)
    runner, note = torch_runner(model.manifest, threads=threads)
    rate = model.manifest.preprocess["sampling_rate"]
    figures: dict[str, Any] = {"torch_note": note, "clips": {}}
    for seconds in SECONDS:
        feed = model.preprocess([synthetic_clip(seconds, rate, np.random.default_rng(0))]).arrays
        calls = [lambda feed=feed: model(**feed), runner(feed)]
        samples = time_calls(calls, iterations, warmup=max(2, iterations // 10))
        ort, eager = (Timing.from_samples(e, 1, s) for e, s in zip(("onnxruntime", "torch"), samples))
        diff = float(np.max(np.abs(calls[1]() - model(**feed)[model.output_name])))
        figures["clips"][f"{seconds:g}s"] = {
            "input_shape": list(next(iter(feed.values())).shape), "onnxruntime_p50_ms": ort.p50_ms,
            "torch_p50_ms": eager.p50_ms, "onnxruntime_p90_ms": ort.p90_ms, "torch_p90_ms": eager.p90_ms,
            "speedup": eager.p50_ms / ort.p50_ms, "max_abs_diff": diff}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--layers", type=int, default=12, help="transformer layers of both models (base: 12)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of both engines (1: the steadier comparison on a shared machine)")
    parser.add_argument("--work", type=Path, default=None, help="where to keep the models (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audio.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-bench-audio-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "iterations": args.iterations, "layers": args.layers,
                               "threads": args.threads, "models": {},
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name, folder in build_folders(work, args.layers).items():
        entry = latency(export(folder), args.iterations, args.threads)
        results["models"][name] = entry
        for length, clip in entry["clips"].items():
            print(f"{name:<14} {length:>4} input {clip['input_shape']}: onnxruntime {clip['onnxruntime_p50_ms']:8.1f} ms"
                  f"  torch {clip['torch_p50_ms']:8.1f} ms  -> {clip['speedup']:.2f}x  (max abs diff "
                  f"{clip['max_abs_diff']:.2g})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


if __name__ == "__main__":
    main()
