"""Latency of an artifact's graph under onnxruntime, optionally beside the same model in eager PyTorch.

    zoo bench artifacts/minilm --batch-sizes 1,8 --iterations 50 --vs-torch

Both engines run the same preprocessed arrays (real sentences through the
artifact's tokenizer, or random images through its image transform), so the
figures compare the model computation only. Each batch size is warmed up first,
and the two engines take turns call by call, so a busy machine slows both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from zoo.errors import ConfigError
from zoo.runtime.model import ExportedModel


@dataclass(frozen=True)
class Timing:
    engine: str  # the artifact's engine ("onnxruntime", "openvino bf16", ...) | "torch"
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # inputs per second at the median latency

    @classmethod
    def from_samples(cls, engine: str, batch_size: int, seconds: Sequence[float]) -> Timing:
        p50, p90, p99 = (float(np.percentile(seconds, q)) * 1e3 for q in (50, 90, 99))
        return cls(engine, batch_size, p50, p90, p99, batch_size / (p50 / 1e3))


@dataclass(frozen=True)
class BenchReport:
    name: str
    task: str
    providers: list[str]
    iterations: int
    timings: list[Timing] = field(default_factory=list)
    torch_note: str | None = None  # how the torch model was rebuilt
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # torch vs onnxruntime output, per batch
    # the graph inputs each batch size ran with, e.g. {8: {"input_ids": [8, 23], ...}}: a text model's
    # sequence length is the longest sentence of the batch after tokenisation
    input_shapes: dict[int, dict[str, list[int]]] = field(default_factory=dict)

    def shape_text(self, batch_size: int) -> str:
        """The first graph input's shape at ``batch_size``, e.g. ``input_ids 8x23``."""
        shapes = self.input_shapes.get(batch_size) or {}
        name, shape = next(iter(shapes.items()), ("", []))
        return f"{name} {'x'.join(map(str, shape))}".strip()

    def speedup(self, batch_size: int) -> float | None:
        """torch p50 / the artifact's p50 at ``batch_size`` (above 1: the artifact is faster)."""
        by = {"torch" if t.engine == "torch" else "artifact": t for t in self.timings if t.batch_size == batch_size}
        if "torch" not in by or "artifact" not in by:
            return None
        return by["torch"].p50_ms / by["artifact"].p50_ms

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speedup"] = {bs: self.speedup(bs) for bs in sorted({t.batch_size for t in self.timings})}
        return data


def bench_inputs(model: ExportedModel, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Graph arrays for one batch made by the artifact's own preprocessing."""
    from zoo.tasks import get_task

    items = get_task(model.task).bench_items(batch_size, np.random.default_rng(seed))
    return model.preprocess(items).arrays


def time_calls(calls: Sequence[Callable[[], Any]], iterations: int, warmup: int) -> list[list[float]]:
    """Seconds per call for each of ``calls``, run in turns so that every engine sees the same machine load."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(iterations):
        for call, seconds in zip(calls, samples):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
    return samples


def bench(model: ExportedModel, *, batch_sizes: Sequence[int] = (1, 8), iterations: int = 50,
          warmup: int | None = None, vs_torch: bool = False, threads: int | None = None) -> BenchReport:
    """Time the graph per batch size; with ``vs_torch`` time the source model in eager PyTorch too."""
    if iterations < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"iterations={iterations}, batch sizes={list(batch_sizes)}; both must be positive")
    from zoo.tasks import get_task

    if get_task(model.task).generates:
        raise ConfigError(f"zoo bench times one forward pass per batch, and a {model.task} artifact generates token "
                          "by token: time its generation with benchmarks/bench_generate.py (prefill ms, decode "
                          "tokens/s)")
    if model.manifest.preprocess.get("graphs"):
        raise ConfigError(f"zoo bench times one graph's forward pass, and a {model.task} artifact runs an encoder and "
                          "then its decoder token by token: time its generation with benchmarks/bench_seq2seq.py")
    warmup = max(3, iterations // 10) if warmup is None else warmup
    baseline = _torch_baseline(model, threads) if vs_torch else None
    report = BenchReport(name=model.manifest.name, task=model.task,
                         providers=model.providers, iterations=iterations,
                         torch_note=baseline.note if baseline else None)
    for bs in batch_sizes:
        feed = bench_inputs(model, bs)
        report.input_shapes[bs] = {name: list(array.shape) for name, array in feed.items()}
        calls: list[Callable[[], Any]] = [lambda feed=feed: model(**feed)]
        if baseline is not None:
            calls.append(baseline.runner(feed))
        for engine, seconds in zip((model.engine.label, "torch"), time_calls(calls, iterations, warmup)):
            report.timings.append(Timing.from_samples(engine, bs, seconds))
        if baseline is not None:
            expected = model(**feed)[model.output_name]
            report.max_abs_diff[bs] = float(np.max(np.abs(calls[1]() - expected)))
    return report


@dataclass
class _Baseline:
    runner: Callable[[dict[str, np.ndarray]], Callable[[], np.ndarray]]
    note: str


def _torch_baseline(model: ExportedModel, threads: int | None) -> _Baseline:
    try:
        from zoo.runtime.torch_baseline import torch_runner

        return _Baseline(*torch_runner(model.manifest, threads=threads))
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "transformers", "timm"):
            raise
        raise ConfigError(f"--vs-torch needs PyTorch and the model's source library ({exc.name} is not "
                          "installed); install them with: pip install 'zoo-toolkit[train]'") from None
