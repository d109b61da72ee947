"""zoo optimize: latency of eager torch, the fp32 artifact, and its fused, int8 and OpenVINO forms, with the gates.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_optimize.py [--models minilm,resnet50,convnext_tiny]
        [--iterations 15] [--threads 1,2] [--work DIR] [--out FILE]

Models: the real all-MiniLM-L6-v2 package (batch 8 x 128 tokens and 1 x 32), and
timm resnet50 and convnext_tiny with random weights at batch 8, 224 px. Each
optimised form is made by ``zoo.optimize`` itself (fused; int8 dynamic for MiniLM,
int8-static for the CNNs calibrated on synthetic photo-like images: colour
gradients, ellipses and rectangles, blur and noise, not real photographs). A form
the gates refuse is still timed (from ``--keep-failed``), and the table says it was
refused and why. With OpenVINO installed, the same fp32 graph also runs on OpenVINO
in float32 (``--level openvino``) and, where the CPU computes in bf16 (avx512_bf16 or
amx_bf16), in bf16 (``--level bf16``), beside eager torch with the model in bf16
(channels-last for CNNs). All engines run the same arrays, call by call in turns, so a
busy machine slows them alike; the figure is the median. Prints the CPU and its flags;
writes benchmarks/results/optimize.json.

Targets (issue 10, this 2-core AVX2 machine): MiniLM 8x128 fused >= 1.5x eager and
int8 >= 2.0x eager with minimum cosine >= 0.99; MiniLM 1x32 fused >= 2.0x eager;
CNNs at batch 8 int8-static >= 1.5x the fp32 artifact with top-1 agreement >= 99%.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHOTOS = 128  # 64 calibrate, 64 judge


def photo_like(seed: int, width: int = 320, height: int = 240) -> Any:
    """A synthetic picture with the structure of a photo: smooth colour fields, shapes, edges, noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    fields = [(x * rng.uniform(0.2, 1.5) + rng.uniform(0, 255)) % 256,
              (y * rng.uniform(0.2, 1.5) + rng.uniform(0, 255)) % 256, ((x + y) * rng.uniform(0.1, 1.0)) % 256]
    image = Image.fromarray(np.stack(fields, -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        xs, ys = sorted(rng.integers(0, width, 2)), sorted(rng.integers(0, height, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
    noisy = np.asarray(image).astype(int) + rng.integers(-15, 15, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def photo_folder(work: Path) -> Path:
    folder = work / "photos"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(PHOTOS):
            photo_like(i).save(folder / f"{i:03d}.png")
    return folder


def parent_artifact(key: str, work: Path) -> Path:
    from exporters.onnx import export_onnx
    from tests.tiny import minilm_dir

    out = work / f"{key}-fp32"
    if not (out / "manifest.json").is_file():
        if key == "minilm":
            export_onnx(str(minilm_dir()), out=out)
        else:
            export_onnx(f"timm:{key}", out=out, random_init=True)
    return out


def optimised(parent: Path, level: str, work: Path, eval_data: str | None) -> dict[str, Any]:
    """zoo.optimize's verdict and figures, and the graph to time (kept even when refused)."""
    import zoo

    dest, kept = work / f"{parent.name}-{level}", work / f"{parent.name}-{level}-refused"
    if (dest / "manifest.json").is_file():
        record = json.loads((dest / "manifest.json").read_text())["optimization"]
        return _verdict(True, record["gates"]["checks"], dest / "model.onnx", record)
    if (kept / "refusal.json").is_file():
        return _verdict(False, json.loads((kept / "refusal.json").read_text())["checks"], kept / f"{level}.onnx")
    try:
        result = zoo.optimize(parent, out=dest, level=level, eval_data=eval_data, keep_failed=kept)
    except zoo.GateError as exc:
        return _verdict(False, exc.report.to_dict()["checks"], kept / f"{level}.onnx")
    return _verdict(True, result.manifest.optimization["gates"]["checks"], dest / "model.onnx",
                    result.manifest.optimization)


def _verdict(passed: bool, checks: list[dict[str, Any]], graph: Path, record: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    figures = {c["name"]: c["value"] for c in checks if c["name"].startswith(("parent:", "accuracy", "speed"))}
    failed = [f"{c['name']} {c['value']} (limit {c['limit']})" for c in checks if not c["passed"]]
    entry = {"passed": passed, "gate": figures, "failed": failed, "graph": str(graph)}
    if record is not None:
        entry["recipe"] = {k: record["recipe"].get(k) for k in ("fusions", "quantization", "engine")}
    return entry


def feeds(key: str, parent: Path) -> dict[str, dict[str, Any]]:
    """The shapes the targets name, made by the artifact's own preprocessing."""
    from exporters import gates
    from zoo.artifact import read_manifest
    from zoo.tasks import get_task

    manifest = read_manifest(parent)
    if key == "minilm":
        shapes = gates.speed_shapes(parent, manifest, None)
        return {"8x128": shapes["8x128"], "1x32": shapes["1x32"]}
    images = [photo_like(1000 + i) for i in range(8)]
    return {"batch 8": get_task(manifest.task).runtime_preprocessor(parent, manifest)(images).arrays}


def time_engines(parent: Path, graphs: dict[str, tuple[Path, Any]], shape_feeds: dict[str, dict[str, Any]],
                 iterations: int, threads: int, torch_bf16: bool) -> dict[str, dict[str, float]]:
    """Median ms per engine and shape: eager torch (fp32, and bf16 where the CPU computes it) and each graph on its
    engine, taking turns call by call."""
    import numpy as np

    from exporters.gates import session
    from zoo.artifact import read_manifest
    from zoo.runtime.bench import time_calls
    from zoo.runtime.torch_baseline import torch_runner

    runner, note = torch_runner(read_manifest(parent), threads=threads)
    torch_calls = {"torch eager": runner, **({"torch bf16": bf16_runner(parent)} if torch_bf16 else {})}
    sessions = {name: session(path, threads=threads, engine=engine) for name, (path, engine) in graphs.items()}
    table: dict[str, dict[str, float]] = {}
    for shape, feed in shape_feeds.items():
        calls = [make(feed) for make in torch_calls.values()] + [_graph_call(s, feed) for s in sessions.values()]
        samples = time_calls(calls, iterations=iterations, warmup=2)
        table[shape] = {name: round(1e3 * float(np.median(s)), 2)
                        for name, s in zip([*torch_calls, *sessions], samples)}
    table["torch"] = {"note": note}  # type: ignore[dict-item]
    return table


def bf16_runner(parent: Path) -> Any:
    """Eager torch with the model in bf16 (float inputs cast to bf16; images channels-last), as a user would run it."""
    import torch

    from zoo.artifact import read_manifest
    from zoo.runtime.torch_baseline import torch_model

    module, _ = torch_model(read_manifest(parent))
    module = module.to(torch.bfloat16)
    image = read_manifest(parent).task.startswith("image")
    if image:
        module = module.to(memory_format=torch.channels_last)

    def runner(feed: dict[str, Any]) -> Any:
        tensors = {}
        for name, array in feed.items():
            tensor = torch.from_numpy(array)
            if tensor.is_floating_point():
                tensor = tensor.to(torch.bfloat16)
                tensor = tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor
            tensors[name] = tensor

        def call() -> Any:
            with torch.inference_mode():
                return module(**tensors)

        return call

    return runner


def _graph_call(sess: Any, feed: dict[str, Any]) -> Any:
    names = [i.name for i in sess.get_inputs()]
    inputs = {n: feed[n] for n in names}
    return lambda: sess.run(None, inputs)


def bench_model(key: str, work: Path, iterations: int, thread_counts: list[int], bf16: bool) -> dict[str, Any]:
    from exporters.optimize import ENGINE_LEVELS, fused_at_export
    from zoo.artifact import read_manifest
    from zoo.runtime import engines

    parent = parent_artifact(key, work)
    int8_level, eval_data = ("int8", None) if key == "minilm" else ("int8-static", str(photo_folder(work)))
    # a graph zoo export fused already (convnext's GELUs) is its own fused level: optimize refuses to fuse it again
    fused = [] if fused_at_export(read_manifest(parent)) else ["fused"]
    names = fused + [int8_level] + (["openvino"] + (["bf16"] if bf16 else []) if engines.installed("openvino") else [])
    levels = {level: optimised(parent, level, work, eval_data) for level in names}
    graphs = {"fp32": (parent / "model.onnx", None),
              **{lv: (Path(v["graph"]), ENGINE_LEVELS.get(lv)) for lv, v in levels.items()}}
    latency = {f"{n} threads": time_engines(parent, graphs, feeds(key, parent), iterations, n, bf16)
               for n in thread_counts}
    return {"levels": levels, "latency_ms": latency}


def print_table(results: dict[str, Any]) -> None:
    cpu = results["machine"]
    print(f"\nCPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {', '.join(cpu['cpu_flags']) or 'none of interest'}; "
          f"bf16 compute: {cpu['bf16_compute']}")
    print(f"{'model':<14}{'threads':<11}{'shape':<9}{'engine':<13}{'ms':>9}{'vs eager':>10}{'vs fp32':>9}  gate")
    for key, entry in results["models"].items():
        for threads, table in entry["latency_ms"].items():
            for shape, row in table.items():
                if shape == "torch":
                    continue
                for engine, ms in row.items():
                    level = entry["levels"].get(engine)
                    gate = "" if level is None else _gate_text(level)
                    print(f"{key:<14}{threads:<11}{shape:<9}{engine:<13}{ms:>9.1f}{row['torch eager'] / ms:>9.2f}x"
                          f"{row['fp32'] / ms:>8.2f}x  {gate}")


def _gate_text(level: dict[str, Any]) -> str:
    figures = ", ".join(f"{k.replace('parent: ', '')} {v}" for k, v in level["gate"].items() if not k.startswith("speed"))
    verdict = "passed" if level["passed"] else "REFUSED: " + "; ".join(level["failed"])
    return f"{figures} [{verdict}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,resnet50,convnext_tiny")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--threads", default="1", help="intra-op threads of every engine, e.g. 1,2 (default 1)")
    parser.add_argument("--work", type=Path, default=None, help="where artifacts are kept between runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "optimize.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-bench-optimize-"))
    work.mkdir(parents=True, exist_ok=True)
    from zoo.runtime import engines

    bf16, evidence = engines.bf16_compute()
    results: dict[str, Any] = {"machine": machine_info(cpu_flags=engines.relevant_flags(), bf16_compute=evidence),
                               "iterations": args.iterations,
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": {}}
    print(f"CPU: {results['machine']['cpu']}; {', '.join(engines.relevant_flags())}; bf16 compute: {evidence}",
          flush=True)
    thread_counts = [int(n) for n in args.threads.split(",")]
    for key in args.models.split(","):
        results["models"][key] = bench_model(key, work, args.iterations, thread_counts, bf16)
        print(f"done {key}", flush=True)
    results["machine"]["load_average_after"] = list(os.getloadavg())
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['machine']['cpu']}, {results['machine']['cores']} cores)")


if __name__ == "__main__":
    main()
