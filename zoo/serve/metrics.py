"""Prometheus metrics of one server (prometheus-client), exposed at ``GET /metrics``.

Each app gets its own registry, so several apps in one process (tests) do not
collide. Under ``zoo serve --workers N`` every worker process writes to the
shared folder named by ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds up all
of them (prometheus-client's multi-process mode).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from zoo.serve.batching import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Request counts and latency per endpoint, and per model: batch sizes, run time, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zoo_requests", "HTTP requests answered, by endpoint, model and status code",
                                ["endpoint", "model", "code"], registry=r)
        self.latency = Histogram("zoo_request_duration_seconds", "Time from request start to response end",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("zoo_batch_size", "Rows (inputs) per onnxruntime call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("zoo_batch_requests", "Requests combined into one onnxruntime call",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.run_seconds = Histogram("zoo_batch_duration_seconds", "Time of one batched model call "
                                     "(preprocessing included for /predict)", ["model"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.generations = Counter("zoo_generations", "Text generations ended, by outcome: finished, cancelled "
                                   "(the client left), failed", ["model", "outcome"], registry=r)
        self.generated_tokens = Counter("zoo_generated_tokens", "New tokens of text generations", ["model"],
                                        registry=r)
        self.queue_depth = Gauge("zoo_queue_depth", "Requests waiting for a batch", ["model", "queue"],
                                 registry=r, multiprocess_mode="livesum")

    def batch_observer(self, model: str) -> Callable[[BatchStats], None]:
        def observe(stats: BatchStats) -> None:
            self.batch_rows.labels(model).observe(stats.rows)
            self.batch_requests.labels(model).observe(stats.requests)
            self.run_seconds.labels(model).observe(stats.seconds)

        return observe

    def queue_observer(self, model: str, queue: str) -> Callable[[float], None]:
        gauge = self.queue_depth.labels(model, queue)
        return gauge.set

    def generation_observer(self, model: str) -> Callable[[str, int], None]:
        def observe(outcome: str, tokens: int) -> None:
            self.generations.labels(model, outcome).inc()
            self.generated_tokens.labels(model).inc(tokens)

        return observe

    def observe_request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(code)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
