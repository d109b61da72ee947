"""Wall time of ``zoo export`` + ``zoo verify`` on MiniLM: this checkout against another one, taking turns.

    git worktree add --detach ../zoo-baseline main
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_export_side_by_side.py --baseline ../zoo-baseline [--repeats 5]

Each repeat runs, in fresh processes and as a user would, ``zoo export MINILM
--onnx --out DIR`` then ``zoo verify DIR``, once with the baseline checkout first on
PYTHONPATH and once with this one; the order alternates between repeats so that
neither side always runs on a warmer or quieter machine. The figure is the ratio of
the medians (wall time, and CPU time of the two processes, which a busy neighbour
disturbs less). Writes benchmarks/results/export_side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


def export_and_verify(checkout: Path, model: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    times = {}
    for name, argv in (("export", ["export", str(model), "--onnx", "--out", str(out), "--json"]),
                       ("verify", ["verify", str(out), "--json"])):
        start, cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run([sys.executable, "-m", "zoo", *argv], env=env, cwd=checkout, capture_output=True,
                              text=True, check=False)
        times[name] = time.perf_counter() - start
        times[f"{name}_cpu"] = _children_cpu() - cpu
        if done.returncode != 0:
            raise RuntimeError(f"{checkout}: zoo {name} failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(out)
    times["total"] = times["export"] + times["verify"]
    times["total_cpu"] = times["export_cpu"] + times["verify_cpu"]
    return times


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of zoo (e.g. main)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_side_by_side.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.tiny import minilm_dir

    model = minilm_dir()
    sides = {"baseline": args.baseline.resolve(), "this": ROOT}
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["baseline", "this"] if repeat % 2 == 0 else ["this", "baseline"]
            for side in order:
                runs[side].append(export_and_verify(sides[side], model, Path(tmp) / side))
                print(f"repeat {repeat} {side}: {runs[side][-1]['total']:.1f} s", flush=True)
    summary: dict[str, Any] = {side: {k: round(statistics.median(r[k] for r in runs[side]), 2)
                                      for k in ("export", "verify", "total", "total_cpu")} for side in runs}
    summary["ratio"] = round(summary["this"]["total"] / summary["baseline"]["total"], 3)
    summary["ratio_cpu"] = round(summary["this"]["total_cpu"] / summary["baseline"]["total_cpu"], 3)
    result = {"machine": machine_info(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "baseline": str(sides["baseline"]), "repeats": args.repeats, "median_s": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median export + verify: baseline {summary['baseline']['total']:.1f} s, this {summary['this']['total']:.1f}"
          f" s -> {summary['ratio']:.2f}x wall, {summary['ratio_cpu']:.2f}x CPU time (target <= 0.7x); written {args.out}")


if __name__ == "__main__":
    main()
