"""The gates an optimised graph must pass before it may become an artifact.

Accuracy, judged against the parent artifact on the gate's data (and against
torch fp32 on the verification grid when the source resolves) by the task's own
gate (``Task.optimization_gate``):

- embeddings: cosine to the reference, minimum >= 0.99 and mean >= 0.995
- classifiers: top-1 agreement >= 99% (token by token for NER); on labelled
  data, accuracy may drop by at most ``max_drop`` points
- a lossless recipe (fusions only) must also match element-wise within the
  parent's export tolerances, so a "fusion" that changes the numbers is caught

Speed, on this machine: at each of the task's usual shapes the optimised graph
must be at least MIN_SPEEDUP times as fast as its parent (medians of runs that
take turns call by call), else both timings are reported and it is refused. Where
the torch source resolves (the verification grid's torch fp32), eager torch takes
its turn too, and a graph slower than it at any of those shapes is refused. Every
candidate of one ``zoo optimize`` run is timed in the same turns as the parent and
torch (each timed once), and the turns stop as soon as every comparison is clear.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.evaldata import PROBE_SENTENCES, EvalSet
from exporters.verify import OutputStats
from zoo.checks import Check
from zoo.manifest import Manifest
from zoo.runtime import engines
from zoo.runtime.engines import Engine
from zoo.spec import Tolerances
from zoo.tasks import get_task
from zoo.tasks.base import Gate, Task

MIN_SPEEDUP = 1.05  # "measurably faster": a 5% margin over the noise of a shared machine
SPEED_BUDGET_S = 1.0  # per shape and timed call, the most the turns take when a decision stays close
MIN_TURNS, MAX_TURNS = 5, 200
# One intra-op thread for timing: on a shared machine a busy neighbour turns a thread pool's
# spin-waits into noise of several times the effect being measured (benchmarks/ also reports
# default threads).
SPEED_THREADS = 1


@dataclass
class Outputs:
    """One graph's first output on every batch of a data set (with the masks of text batches)."""

    values: list[np.ndarray]
    masks: list[np.ndarray | None] = field(default_factory=list)


def session(path: Path, providers: list[str] | None = None, threads: int | None = None,
            engine: Engine | None = None) -> Any:
    """An onnxruntime session with ``zoo.load``'s graph level; worker threads sleep instead of spinning.

    ``engine``: another engine setting (OpenVINO f32 or bf16) judged on the same graph.
    """
    if engine is not None and engine.name != "onnxruntime":
        return engines.open_session(path, engine, threads=threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def run_all(sess: Any, batches: list[dict[str, np.ndarray]]) -> Outputs:
    output = sess.get_outputs()[0].name
    names = [i.name for i in sess.get_inputs()]
    values = [sess.run([output], {n: feed[n] for n in names})[0] for feed in batches]
    return Outputs(values, [feed.get("attention_mask") for feed in batches])


# ---------------------------------------------------------------- accuracy


def task_checks(task: Task, reference: Outputs, got: Outputs, against: str, data: str,
                tol: Tolerances | None = None) -> list[Check]:
    """The task-level agreement of ``got`` with ``reference`` (the parent's or torch's outputs).

    ``tol``: a top-1 change within it is a tie (the recipe's measured noise); none by default.
    """
    gate = gate_of(task, tol)
    for ref, out, mask in zip(reference.values, got.values, reference.masks or [None] * len(reference.values)):
        gate.add(ref, out, mask)
    return gate.checks(against, data)


def gate_of(task: Task, tol: Tolerances | None = None) -> Gate:
    return task.optimization_gate(tol or Tolerances(atol=0.0, rtol=0.0))


def accuracy_check(reference: Outputs, got: Outputs, labels: np.ndarray | None, max_drop: float) -> Check:
    """Accuracy on labelled rows, parent vs optimised; the drop is in percentage points."""
    if labels is None or not len(labels):
        return Check("accuracy drop", True, "not measured", f"<= {max_drop:g} points",
                     "no labelled data (give --eval-data with a label column)")
    before = _accuracy(reference, labels)
    after = _accuracy(got, labels)
    drop = before - after
    return Check("accuracy drop", bool(drop <= max_drop), f"{drop:+.2f} points", f"<= {max_drop:g} points",
                 f"{before:.2f}% -> {after:.2f}% on {len(labels)} labelled rows")


def _accuracy(outputs: Outputs, labels: np.ndarray) -> float:
    predicted = np.concatenate([v.argmax(-1) for v in outputs.values])[:len(labels)]
    return 100.0 * float((predicted == labels[:len(predicted)]).mean())


def elementwise_check(reference: Outputs, got: Outputs, tol: Tolerances, rule: str, against: str) -> Check:
    """The parent's export tolerances under its rule: a lossless recipe must not change the numbers."""
    stats = OutputStats(against, tol, rule)
    for index, (ref, out) in enumerate(zip(reference.values, got.values)):
        stats.add(ref, out, f"batch {index}")
    check = stats.check()
    check.name = f"{against}: element-wise (lossless recipe)"
    return check


def max_abs_difference(reference: Outputs, got: Outputs) -> float:
    diffs = [float(np.max(np.abs(r.astype(np.float64) - g))) for r, g in zip(reference.values, got.values)
             if r.shape == g.shape and r.size]
    return max(diffs) if diffs else float("inf")


# ---------------------------------------------------------------- speed


@dataclass
class SpeedFigure:
    shape: str
    parent_ms: float
    optimized_ms: float
    torch_ms: float | None = None  # eager torch fp32 at the same shape, where the source resolves
    turns: int | None = None  # how many turns the medians are of

    @property
    def speedup(self) -> float:
        return self.parent_ms / self.optimized_ms if self.optimized_ms > 0 else 0.0

    @property
    def vs_torch(self) -> float | None:
        return self.torch_ms / self.optimized_ms if self.torch_ms is not None and self.optimized_ms > 0 else None


def speed_shapes(folder: Path, manifest: Manifest, images: EvalSet | None) -> dict[str, dict[str, np.ndarray]]:
    """The task's usual shapes: text at batch 1 x 32 and 8 x 128 tokens; images at batch 1 and 8."""
    task = get_task(manifest.task)
    if task.modality == "text":
        return _text_shapes(folder, manifest, task)
    return _image_shapes(manifest, images)


def _text_shapes(folder: Path, manifest: Manifest, task: Task) -> dict[str, dict[str, np.ndarray]]:
    shapes = {}
    long_texts = [PROBE_SENTENCES[-2][i * 37:] for i in range(8)]  # all rows reach the length limit
    for batch, tokens in ((1, 32), (8, 128)):
        limited = manifest.replace(preprocess={**manifest.preprocess, "max_length": tokens})
        shapes[f"{batch}x{tokens}"] = task.runtime_preprocessor(folder, limited)(long_texts[:batch]).arrays
    return shapes


def _image_shapes(manifest: Manifest, images: EvalSet | None) -> dict[str, dict[str, np.ndarray]]:
    """Batches of the gate's real images where there are 8 of them, else normalised noise of the input size."""
    rows = np.concatenate([next(iter(b.values())) for b in images.batches]) if images else None
    name = manifest.inputs[0].name
    if rows is None or len(rows) < 8:
        rng = np.random.default_rng(0)
        rows = rng.standard_normal((8, *manifest.preprocess["input_size"])).astype(np.float32)
    return {"batch 1": {name: rows[:1]}, "batch 8": {name: rows[:8]}}


def measure_speed(parent: Path, contenders: list[tuple[Path, Engine | None]],
                  shapes: dict[str, dict[str, np.ndarray]], providers: list[str] | None = None,
                  torch_call: Callable[[dict[str, np.ndarray]], Callable[[], Any]] | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> list[list[SpeedFigure]]:
    """Median latency per shape of every contender (path, engine) against the parent, all in the same turns.

    The parent is timed once for all of them, as is eager torch (``torch_call``: feed -> a call of the
    source); the turns stop once every decision they feed is settled (``take_turns``). One list of figures
    per contender, in order.
    """
    sessions = [session(parent, providers, SPEED_THREADS)]
    sessions += [session(path, providers, SPEED_THREADS, engine) for path, engine in contenders]
    names = ["parent", *(f"contender {i}" for i in range(len(contenders)))]
    figures: list[list[SpeedFigure]] = [[] for _ in contenders]
    for shape, feed in shapes.items():
        calls = {name: _caller(s, feed) for name, s in zip(names, sessions)}
        if torch_call is not None:
            calls["torch"] = torch_call(feed)
        samples = take_turns(calls, decisions(names[1:], torch_call is not None), clock=clock)
        ms = {name: 1e3 * float(np.median(seconds)) for name, seconds in samples.items()}
        for index, name in enumerate(names[1:]):
            figures[index].append(SpeedFigure(shape, ms["parent"], ms[name], ms.get("torch"),
                                              len(samples["parent"])))
    return figures


def decisions(contenders: list[str], torch: bool) -> list[tuple[str, str, float]]:
    """What the turns must settle: each contender against the speed gate's limits and against each other."""
    pairs = [("parent", c, MIN_SPEEDUP) for c in contenders] + [("torch", c, 1.0) for c in contenders if torch]
    return pairs + [(a, b, 1.0) for i, a in enumerate(contenders) for b in contenders[i + 1:]]


def take_turns(calls: dict[str, Callable[[], Any]], settle: list[tuple[str, str, float]],
               budget_s: float | None = None, clock: Callable[[], float] = time.perf_counter
               ) -> dict[str, list[float]]:
    """Seconds per call of each named call, one call of each per turn after a warm-up turn.

    Stops after MIN_TURNS once every ``(a, b, limit)`` is settled: the middle half of the turn-by-turn
    ratios a/b lies on one side of ``limit`` (turns pair the calls under the same load, so a neighbour's
    burst moves both sides of a ratio). Otherwise it goes on until ``budget_s`` (SPEED_BUDGET_S per call
    by default) is spent or MAX_TURNS are taken.
    """
    budget = SPEED_BUDGET_S * len(calls) if budget_s is None else budget_s
    for call in calls.values():
        call()  # warm-up: first calls allocate, OpenVINO compiles lazily
    samples: dict[str, list[float]] = {name: [] for name in calls}
    started = clock()
    for turn in range(1, MAX_TURNS + 1):
        for name, call in calls.items():
            start = clock()
            call()
            samples[name].append(clock() - start)
        if turn >= MIN_TURNS and (clock() - started >= budget or settled(samples, settle)):
            break
    return samples


def settled(samples: dict[str, list[float]], settle: list[tuple[str, str, float]]) -> bool:
    """Whether no ``(a, b, limit)`` has ``limit`` within the middle half of its turn-by-turn ratios a/b."""
    for a, b, limit in settle:
        ratios = np.asarray(samples[a]) / np.maximum(np.asarray(samples[b]), 1e-12)
        low, high = np.percentile(ratios, [25, 75])
        if low <= limit <= high:
            return False
    return True


def _caller(sess: Any, feed: dict[str, np.ndarray]) -> Any:
    names = [i.name for i in sess.get_inputs()]
    inputs = {n: feed[n] for n in names}
    output = [sess.get_outputs()[0].name]
    return lambda: sess.run(output, inputs)


def speed_checks(figures: list[SpeedFigure]) -> list[Check]:
    checks = [Check(f"speed at {f.shape}", bool(f.speedup >= MIN_SPEEDUP), f"{f.speedup:.2f}x",
                    f">= {MIN_SPEEDUP:g}x the parent",
                    f"parent {f.parent_ms:.2f} ms, optimised {f.optimized_ms:.2f} ms (medians)") for f in figures]
    return checks + [Check(f"speed vs torch fp32 eager at {f.shape}", bool(f.vs_torch >= 1.0), f"{f.vs_torch:.2f}x",
                           ">= 1x eager torch", f"torch {f.torch_ms:.2f} ms, optimised {f.optimized_ms:.2f} ms "
                           "(medians)") for f in figures if f.vs_torch is not None]
