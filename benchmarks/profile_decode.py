"""Op by op: where onnxruntime spends one decode step of each causal-LM graph, summed per op type.

    .venv/bin/python benchmarks/profile_decode.py zoo-int4/model.onnx ortgenai-int4/model.onnx [--past 150]
        [--calls 20] [--threads 1 2]

Each graph gets one new token after a cache of ``--past`` random positions (batch 1), the benchmark's session
options (intra-op threads, no spin-waiting) and onnxruntime's profiler. Per op type: kernel milliseconds per
step and node count; the MatMuls are split into those reading a weight and the rest. "wall" is the median
``session.run`` time, so that what the kernels do not account for (the executor's per-node cost) shows too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from profile_ops import kernel_times  # run as a script: benchmarks/ is on sys.path


def decode_feed(session: Any, past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            feed[spec.name] = np.array([[1000]], np.int64)
        elif spec.name == "attention_mask":
            feed[spec.name] = np.ones((1, past + 1), np.int64)
        elif spec.name == "position_ids":
            feed[spec.name] = np.array([[past]], np.int64)
        elif spec.name.startswith("past_key_values."):
            _, heads, _, dim = spec.shape
            dim = dim if isinstance(dim, int) else 64
            feed[spec.name] = rng.standard_normal((1, heads, past, dim)).astype(np.float32)
    return feed


def profile(path: Path, past: int, calls: int, threads: int) -> tuple[dict[str, float], dict[str, int], float]:
    """ms per step and node count per op type, and the median wall ms of a step."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    matmul_b = {n.name: n.input[1] in weights for n in graph.node if n.op_type == "MatMul"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    walls = []
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = decode_feed(plain, past)
    for _ in range(calls + 2):
        start = time.perf_counter()
        plain.run(None, feed)
        walls.append(time.perf_counter() - start)
    del plain
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/profile_decode_{path.parent.name}"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)  # warm-up, left out below
    for _ in range(calls):
        session.run(None, feed)
    totals, counts = kernel_times(Path(session.end_profiling()), matmul_b, calls)
    return totals, counts, 1e3 * float(np.median(walls[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", type=Path)
    parser.add_argument("--past", type=int, default=150)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for threads in args.threads:
        for path in args.graphs:
            totals, counts, wall = profile(path, args.past, args.calls, threads)
            print(f"== {path} ({threads} threads): wall {wall:.2f} ms, kernels {sum(totals.values()):.2f} ms, "
                  f"{sum(counts.values())} nodes")
            for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {op:34s} {ms:7.2f} ms  x{counts[op]}")


if __name__ == "__main__":
    main()
