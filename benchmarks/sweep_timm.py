"""Every timm family through ``zoo export --random-init``: one small model per family, export + verify.

    nice -n 10 .venv/bin/python benchmarks/sweep_timm.py            # resumable: finished models are kept
    .venv/bin/python benchmarks/sweep_timm.py --only dla,visformer --rerun
    .venv/bin/python benchmarks/sweep_timm.py --table               # the table of what is recorded so far

A family is one of timm's model modules (``timm.list_modules()``: resnet, beit, dla, ...).
Its model is the smallest architecture in that module by parameter count (counted on
torch's meta device, so nothing is allocated), ties broken by input size; timm's
``test_*`` architectures are left out because they stand for no real family. The
large-input cases of ``LARGE`` (the family's biggest inputs, e.g. SAM's 1024 px)
run too, to measure memory. Each model runs in its own process under a timeout
and a resident-memory cap (the parent samples the child's RSS and kills it above
the cap), so one model can neither hang the sweep nor take the machine down. The
child prints each export stage as it starts, so a killed run still says where it
died. Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``).

Results (machine, versions, settings, per model: family, pass/fail, exporter kept,
what was tried, seconds, peak RSS, and a one-line reason naming the upstream
limitation for a failure) go to benchmarks/results/sweep_timm.json after every
model, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS_FILE = ROOT / "benchmarks" / "results" / "sweep_timm.json"
LARGE = ("samvit_base_patch16",)  # 1024 px: the input that was OOM-killed at 24 GB (issue 14)
GIB = 1024**3

# Known upstream limitations, matched against a failure's message: (pattern, one-line reason).
UPSTREAM = (
    (r"GuardOnDataDependentSymNode|data-dependent|Could not guard on data-dependent",
     "torch.export cannot trace data-dependent shapes/control flow in this model"),
    (r"is not a graph input, initializer, or output of a previous node",
     "torch.onnx (dynamo) emits a graph with a dangling node input that onnxruntime refuses"),
    (r"dynamo graph at onnxruntime optimisation '\w+' failed: output .*torchscript exporter failed: "
     r"\w*Unsupported\w*: Exporting the operator '([\w:]+)'",
     "the dynamo graph misses the output tolerance and the TorchScript exporter has no conversion for {0}"),
    (r"No symbolic function|Unsupported: ONNX export of operator|is not supported in ONNX|UnsupportedOperatorError",
     "the TorchScript ONNX exporter has no conversion for an operator this model uses"),
    (r"NOT_IMPLEMENTED|Could not find an implementation",
     "onnxruntime has no CPU kernel for an operator in the graph"),
    (r"Constraints violated|specialized|Dim\w* .*must|ConstraintViolation",
     "torch.export specialises an axis the model computes with, so the batch axis cannot stay dynamic"),
    (r"resident memory above", "export + verification exceeds the sweep's memory cap"),
    (r"timed out", "export + verification exceeds the sweep's time limit on this machine"),
)


# ---------------------------------------------------------------- choosing one model per family


def pick_models() -> dict[str, dict[str, Any]]:
    """{family: {model, params, input_size}}: the smallest non-test architecture of each timm module."""
    import warnings

    import timm

    warnings.simplefilter("ignore")
    picks = {}
    for family in timm.list_modules():
        sized = []
        for name in timm.list_models(module=family):
            params = None if name.startswith("test_") else meta_params(name)
            if params is not None:
                size = tuple(timm.models.get_pretrained_cfg(name).input_size)
                sized.append((params, size[1] * size[2], name, size))
        if sized:
            params, _, name, size = min(sized)
            picks[family] = {"model": name, "params": params, "input_size": list(size)}
    return picks


def meta_params(name: str) -> int | None:
    """Parameter count of a timm architecture, built on the meta device (no memory); None if it cannot be."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # some constructors compute with real values; those are skipped
        return None
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- one model (the child process)


def run_one(model: str, workdir: Path, seed: int) -> None:
    """Export + verify ``timm:MODEL`` with random weights; print stages and the result as JSON lines."""
    import resource

    from exporters.onnx import export_onnx
    from zoo.errors import ZooError

    def stage(name: str) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        print(json.dumps({"stage": name, "peak_rss_gib": round(peak, 2)}), flush=True)

    try:
        result = export_onnx(f"timm:{model}", out=workdir / "artifact", random_init=True, seed=seed, progress=stage)
    except ZooError as exc:
        outcome = {"passed": False, "error": str(exc).splitlines()[0][:2000], "type": type(exc).__name__}
    except Exception as exc:  # not a ZooError: zoo failed to turn this failure into one clear error
        outcome = {"passed": False, "error": f"uncaught {type(exc).__name__}: {str(exc).splitlines()[:1]}"[:2000],
                   "type": type(exc).__name__}
    else:
        m = result.manifest
        outcome = {"passed": True, "exporter": m.exporter, "notes": list(m.export_notes),
                   "ort_optimization": m.spec["export"]["ort_optimization"], "output": _output_check(result.report),
                   **({"widened": m.tolerances["widened"]} if "widened" in m.tolerances else {})}
    print(json.dumps({"result": outcome}), flush=True)


def _output_check(report: Any) -> str:
    return next((c.value for c in report.checks if c.name.startswith("output ")), "")


# ---------------------------------------------------------------- the parent: one child per model


class Child:
    """One model's process: its stage lines, sampled resident memory, timeout and memory cap."""

    def __init__(self, model: str, workdir: Path, seed: int):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--one", model, "--workdir", str(workdir),
                                      "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self.stage, self.result, self.stderr = "start", None, ""
        self.sampled_peak = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errs = threading.Thread(target=self._read_stderr, daemon=True)
        self._errs.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "stage" in event:
                self.stage = event["stage"]
            if "result" in event:
                self.result = event["result"]

    def _read_stderr(self) -> None:
        self.stderr = self.proc.stderr.read()[-4000:]

    def rss_gib(self) -> float:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) * 1024 / GIB if match else 0.0

    def wait(self, timeout_s: float, cap_gib: float) -> tuple[int, float, str | None]:
        """(exit status, peak RSS GiB from the kernel, why it was killed or None)."""
        start, killed = time.monotonic(), None
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._reader.join(5)
                self._errs.join(5)
                return status, max(usage.ru_maxrss * 1024 / GIB, self.sampled_peak), killed
            rss = self.rss_gib()
            self.sampled_peak = max(self.sampled_peak, rss)
            if killed is None and rss > cap_gib:
                killed = f"killed: resident memory above the {cap_gib:g} GiB cap ({rss:.1f} GiB) at stage '{self.stage}'"
            elif killed is None and time.monotonic() - start > timeout_s:
                killed = f"killed: timed out after {timeout_s:.0f} s at stage '{self.stage}'"
            if killed is not None:
                os.kill(self.proc.pid, signal.SIGKILL)
            time.sleep(0.25)


def sweep_one(family: str, pick: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        start = time.perf_counter()
        child = Child(pick["model"], Path(tmp), args.seed)
        status, peak, killed = child.wait(args.timeout, args.memory_cap)
        seconds = time.perf_counter() - start
    row = {"family": family, "model": pick["model"], "params_m": round(pick["params"] / 1e6, 2),
           "input_size": pick["input_size"], "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2),
           "last_stage": child.stage}
    if killed or child.result is None:
        error = killed or f"the process died (status {status}) at stage '{child.stage}': {child.stderr[-300:]}"
        return {**row, "passed": False, "error": error, "reason": upstream_reason(error)}
    result = child.result
    if not result["passed"]:
        return {**row, "passed": False, "error": result["error"], "reason": upstream_reason(result["error"])}
    return {**row, **result}


def upstream_reason(error: str) -> str:
    for pattern, reason in UPSTREAM:
        if match := re.search(pattern, error):
            return reason.format(*match.groups())
    return "unclassified: " + error[:200]


# ---------------------------------------------------------------- results


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"results": {}}


def save_results(data: dict[str, Any], path: Path) -> None:
    rows = list(data["results"].values())
    data["totals"] = {"models": len(rows), "passed": sum(r["passed"] for r in rows),
                      "failed": sum(not r["passed"] for r in rows),
                      "by_exporter": _count(r.get("exporter") for r in rows if r["passed"]),
                      "failure_reasons": _count(r["reason"] for r in rows if not r["passed"])}
    data["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def print_table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"timm families: {data.get('totals', {}).get('passed', 0)} passed, "
                        f"{data.get('totals', {}).get('failed', 0)} failed")
    for column in ("family", "model", "result", "exporter", "seconds", "peak GiB", "reason / notes"):
        table.add_column(column, overflow="fold")
    for row in sorted(data["results"].values(), key=lambda r: (r["passed"], r["family"])):
        mark = "pass" if row["passed"] else "FAIL"
        note = row.get("reason", "") if not row["passed"] else "; ".join(row.get("notes", []))[:160]
        if row.get("widened"):
            note = "; ".join(filter(None, [note, f"float32 noise floor: {row['widened']}"]))
        table.add_row(row["family"], row["model"], mark, row.get("exporter", "-"), f"{row['seconds']:.0f}",
                      f"{row['peak_rss_gib']:.1f}", note)
    Console(width=220).print(table)


def sweep(args: argparse.Namespace) -> None:
    data = load_results(args.results)
    if args.rerun_picks or "picks" not in data:
        print("choosing one model per family (meta-device parameter counts, in a child process) ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--pick"], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        data["picks"] = json.loads(done.stdout.strip().splitlines()[-1])
        save_results(data, args.results)
    todo = dict(data["picks"])
    for model in LARGE:
        todo[f"{model} (large input)"] = _large_pick(model)
    if args.only:
        wanted = set(args.only.split(","))
        todo = {f: p for f, p in todo.items() if f in wanted or p["model"] in wanted}
    data.update(machine=machine_info(), settings={"seed": args.seed, "timeout_s": args.timeout,
                                                   "memory_cap_gib": args.memory_cap})
    for index, (family, pick) in enumerate(sorted(todo.items()), 1):
        if pick["model"] in data["results"] and not args.rerun:
            continue
        print(f"[{index}/{len(todo)}] {family}: {pick['model']} ...", flush=True)
        row = sweep_one(family, pick, args)
        data["results"][pick["model"]] = row
        save_results(data, args.results)
        verdict = "pass" if row["passed"] else f"FAIL ({row['reason']})"
        print(f"    {verdict} in {row['seconds']:.0f} s, peak {row['peak_rss_gib']:.1f} GiB", flush=True)
    print_table(data)


def _large_pick(model: str) -> dict[str, Any]:
    import timm

    params = meta_params(model) or 0
    return {"model": model, "params": params, "input_size": list(timm.models.get_pretrained_cfg(model).input_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated families or models")
    parser.add_argument("--rerun", action="store_true", help="run models that already have a result again")
    parser.add_argument("--rerun-picks", action="store_true", help="choose the models per family again")
    parser.add_argument("--table", action="store_true", help="print the recorded results and exit")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model (default 1800)")
    parser.add_argument("--memory-cap", type=float, default=12, help="resident GiB per model (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help=f"results file (default {RESULTS_FILE})")
    parser.add_argument("--pick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.workdir, args.seed)
    elif args.pick:
        print(json.dumps(pick_models()))
    elif args.table:
        print_table(load_results(args.results))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
