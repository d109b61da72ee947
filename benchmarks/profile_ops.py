"""Op by op: where onnxruntime spends a call of each graph, summed per op type (issue 26's gap hunt).

    .venv/bin/python benchmarks/profile_ops.py optimum/model.onnx zoo/model.onnx [--shape 8x128 | --shape 8]
        [--calls 5] [--threads 2]

Text graphs get random token ids of batch x tokens, image graphs random 224-px pixels of that batch.
Each graph gets the benchmark's session options (--threads intra-op threads, no spin-waiting) plus
onnxruntime's profiler; per op type, the kernel milliseconds per call and the node count are printed,
the MatMuls split into those reading a weight (projections) and the rest (attention's).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import numpy as np


def feeds(session: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    names = {i.name for i in session.get_inputs()}
    if "pixel_values" in names:
        return {"pixel_values": rng.standard_normal((shape[0], 3, 224, 224)).astype(np.float32)}
    ids = rng.integers(1000, 29000, shape).astype(np.int64)
    made = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: made[name] for name in names}


def profile(path: Path, shape: tuple[int, ...], calls: int, threads: int) -> tuple[dict[str, float], dict[str, int]]:
    """ms per call and node count per op type (MatMul split by whether its second input is a weight)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    matmul_b = {n.name: n.input[1] in weights for n in graph.node if n.op_type == "MatMul"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = feeds(session, shape)
    session.run(None, feed)  # warm-up, left out below
    for _ in range(calls):
        session.run(None, feed)
    return kernel_times(Path(session.end_profiling()), matmul_b, calls)


def kernel_times(trace: Path, matmul_b: dict[str, bool], calls: int) -> tuple[dict[str, float], dict[str, int]]:
    """From onnxruntime's profile after a warm-up call and ``calls`` timed ones: kernel ms per call and node
    count per op type, MatMuls split by whether their B is a weight (``matmul_b``: node name -> that)."""
    events = json.loads(trace.read_text())
    totals: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    runs = [e for e in events if e.get("name") == "model_run"]
    first = runs[1]["ts"] if len(runs) > 1 else 0  # skip the warm-up call's nodes
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < first:
            continue
        op = event["args"]["op_name"]
        node = event["name"][: -len("_kernel_time")]
        if op == "MatMul" and node in matmul_b:
            op = "MatMul (weight)" if matmul_b[node] else "MatMul (activations)"
        totals[op] += event["dur"] / 1e3 / calls
        counts[op] += 1
    return dict(totals), {op: n // calls for op, n in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", type=Path)
    parser.add_argument("--shape", default="8x128", help="batch x tokens for text, batch for images")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split("x"))
    for path in args.graphs:
        totals, counts = profile(path, shape, args.calls, args.threads)
        print(f"== {path}: {sum(totals.values()):.1f} ms kernel time per call")
        for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:16]:
            print(f"  {op:28s} {ms:9.1f} ms  x{counts[op]}")


if __name__ == "__main__":
    main()
