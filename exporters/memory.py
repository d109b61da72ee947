"""The memory plan of a verification grid: every case estimated before it runs, shrunk or refused to fit.

    ZOO_MEMORY_BUDGET=4GiB zoo export ./wav2vec2-small --onnx    # default 8GiB

A case's estimate is the process as it stands when the plan is made (Python, torch, the
model's weights), what export and onnxruntime load later (``RUNTIME_LIBRARIES``),
onnxruntime's own copy of the weights (``ORT_WEIGHT_COPIES``), and the task's terms for
the case (``Task.memory_terms``: attention, activations, feature maps, frames, queries).
A case over the budget is made smaller by its task (``Task.shrink_case``: a shorter clip
or sequence, then a smaller batch) until it fits, and the plan says so; when a case
cannot shrink enough, the export is refused in one line before anything is written.

What is measured, per case and phase (torch forward, onnxruntime run), is the process's
peak resident set: the kernel's high-water mark ``VmHWM``, reset before the case by
writing 5 to ``/proc/self/clear_refs`` (Linux). It counts every page the process touched,
native allocations of torch and onnxruntime included. Where the reset is not allowed the
figure is the peak of the process so far, and the report says so.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from zoo.errors import ConfigError
from zoo.tasks._memory import GIB, MIB, CaseMemory, ModelDims, size_text
from zoo.tasks.base import Case

__all__ = ["BUDGET_ENV", "budget", "collection_paused", "float64_estimate", "frozen_heap", "measure", "memory_record",
           "plan_grid", "resets_allowed", "resident", "size_text"]

BUDGET_ENV = "ZOO_MEMORY_BUDGET"
DEFAULT_BUDGET = 8 * GIB
# onnxruntime, onnx and the exporter's libraries and the session, loaded after the plan is made (measured on
# a small wav2vec2: 155 MiB over the process at the plan when onnxruntime ran its smallest case)
RUNTIME_LIBRARIES = 512 * MIB
# onnxruntime holds the graph's weights itself, and a second copy while it optimises the graph at load
ORT_WEIGHT_COPIES = 2
FIXED_TERMS = ("process", "libraries", "weights")  # what every case of a model holds; the rest is its forward
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB, "g": GIB, "gb": GIB,
          "gib": GIB, "t": 1024 * GIB, "tb": 1024 * GIB, "tib": 1024 * GIB}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")
HWM_RESET = "/proc/self/clear_refs"
MEASURES = "peak resident set of the process while the case ran (VmHWM, reset before each case)"
MEASURES_UNRESET = "peak resident set of the process so far (VmHWM; this system does not let zoo reset it per case)"

Step = Callable[[str], None]


def budget() -> int:
    """The budget in bytes: ``ZOO_MEMORY_BUDGET`` (e.g. 8GiB, 6000MiB, 12G, or bytes), else 8 GiB."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or float(match.group(1)) * unit < MIB:
        raise ConfigError(f"{BUDGET_ENV}={text!r} is not a memory size of at least 1 MiB; give a number with a "
                          "unit, e.g. 8GiB, 6000MiB or 12G (unset it for the default 8GiB)")
    return int(float(match.group(1)) * unit)


# ---------------------------------------------------------------- measuring


def resident() -> int:
    """The process's resident set now, in bytes (0 where /proc is not there)."""
    return _status_kib("VmRSS") * 1024


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# the highest peak seen before any reset: what "peak memory" of the whole command means
_peak_before_resets = 0


def _reset_peak() -> bool:
    """Set the kernel's high-water mark of this process back to its resident set now; False where not allowed."""
    global _peak_before_resets
    _peak_before_resets = max(_peak_before_resets, peak())
    try:
        with open(HWM_RESET, "w") as clear:
            clear.write("5")
    except OSError:  # not Linux, or a sandbox that forbids it: the peak so far is all there is
        return False
    return True


def peak() -> int:
    """The process's peak resident set since the last reset (since it started, where none was allowed)."""
    kib = _status_kib("VmHWM")
    if kib:
        return kib * 1024
    import resource
    import sys

    most = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS reports bytes, Linux KiB
    return most if sys.platform == "darwin" else most * 1024


def lifetime_peak() -> int:
    """The process's peak resident set since it started, across the per-case resets."""
    return max(_peak_before_resets, peak())


@contextmanager
def measure(case: Case, phase: str) -> Iterator[None]:
    """Record the process's peak while the block runs as ``case``'s peak in ``phase`` (torch, onnxruntime).

    A case the plan did not estimate (a grid made outside ``plan_grid``) is run unmeasured.
    """
    if case.memory is None:
        yield
        return
    if resets_allowed():
        _reset_peak()
    try:
        yield
    finally:
        case.memory.peaks[phase] = max(case.memory.peaks.get(phase, 0), peak())


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive now (torch, transformers, the model) out of every garbage collection in the block.

    Export collects after each grid case and exporter, so that one case's activations are gone
    before the next; a full collection walks the whole heap (~450k objects with MiniLM loaded:
    0.25 s CPU each, ~10% of an export's time, and the exporter's own automatic collections walk
    it too). Frozen, a collection walks only what the block made, which is where the garbage of
    the cases is. Garbage made before the block is collected first; a caller's own freeze (a
    server that froze its heap before forking) is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection in the block; one full collection as it ends (also when it fails).

    For stages that make many long-lived objects and little cyclic garbage: importing torch and
    transformers while the model is built, the exporter's tracing. Each automatic full collection
    there walks the whole growing heap (building MiniLM: 7 of them, 0.7 s CPU; its dynamo export: 4,
    0.4 s), while the garbage they would have freed waits only until the block ends. The collection
    runs before automatic collection resumes: resumed first, its next young-generation pass would
    walk everything the block made, and the full one would walk it all again. A caller that turned
    collection off keeps it off.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if enabled:
            gc.enable()


@lru_cache(maxsize=1)
def resets_allowed() -> bool:
    """Whether this process may reset its high-water mark: each figure is then the case's own peak."""
    return _reset_peak()


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Planner:
    """Estimates a case of one model; ``fixed`` is what every case of it holds (process, libraries, weights)."""

    task: Any
    spec: Any
    dims: ModelDims
    fixed: dict[str, int]

    @classmethod
    def of(cls, task: Any, spec: Any, module: Any) -> Planner:
        dims = ModelDims.of(module)
        fixed = dict(zip(FIXED_TERMS, (resident(), RUNTIME_LIBRARIES, ORT_WEIGHT_COPIES * dims.weights)))
        return cls(task, spec, dims, fixed)

    def estimate(self, case: Case) -> CaseMemory:
        return CaseMemory({**self.fixed, **self.task.memory_terms(self.spec, self.dims, case)})


def plan_grid(task: Any, spec: Any, module: Any, processor: Any, cases: list[Case], limit: int | None = None,
              step: Step | None = None) -> list[Case]:
    """The grid with every case estimated (``case.memory``) and shrunk until it fits ``limit`` bytes (default:
    the budget), each shrink said through ``step``.

    Raises ConfigError, in one line, when a case cannot shrink enough (or the model alone does not fit).
    """
    limit = budget() if limit is None else limit
    say = step or (lambda _msg: None)
    planner = Planner.of(task, spec, module)
    planned = []
    for case in cases:
        fitted = _fit(planner, processor, case, limit)
        if fitted is not case:
            say(f"memory plan: case '{case.label}' needs ~{size_text(planner.estimate(case).estimate)}, over the "
                f"{size_text(limit)} budget ({BUDGET_ENV}); verified at {_shape(fitted)} instead "
                f"(~{size_text(planner.estimate(fitted).estimate)})")
        planned.append(fitted)
    return planned


def _fit(planner: Planner, processor: Any, case: Case, limit: int) -> Case:
    current, memory = case, planner.estimate(case)
    while memory.estimate > limit:
        smaller = planner.task.shrink_case(planner.spec, processor, current)
        if smaller is None:
            raise ConfigError(_refusal(planner, case, current, memory, limit))
        current, memory = smaller, planner.estimate(smaller)
    if current is not case:
        memory.shrunk = f"{_shape(case)} -> {_shape(current)}"
    memory.budget = limit
    current.memory = memory
    return current


def _refusal(planner: Planner, case: Case, smallest: Case, memory: CaseMemory, limit: int) -> str:
    terms = sorted(memory.terms.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {size_text(value)}" for name, value in terms)
    needed = math.ceil(memory.estimate / GIB * 10) / 10
    return (f"{planner.spec.name}: verifying the grid case '{case.label}' needs ~{size_text(memory.estimate)} of "
            f"memory even at its smallest ({_shape(smallest)}: {parts}), over the {size_text(limit)} budget; "
            f"refused before anything ran or was written. On a machine with that much memory raise the budget "
            f"({BUDGET_ENV}={needed:g}GiB), or export a smaller model")


def _shape(case: Case) -> str:
    return "x".join(str(d) for d in next(iter(case.inputs.values())).shape)


def float64_estimate(memory: CaseMemory) -> int:
    """The case run in float64 (the noise floor): every tensor of the forward doubles, and the float64 copy of
    the model (twice the float32 weights) takes the place of onnxruntime's two copies (its session is closed)."""
    return memory.estimate + sum(v for k, v in memory.terms.items() if k not in FIXED_TERMS)


def memory_record(cases: list[Case]) -> dict[str, Any]:
    """The verification report's ``memory``: the budget, what is measured, and per case estimate and peaks
    (empty for a grid the plan did not estimate)."""
    planned = [(case.label, case.memory) for case in cases if case.memory is not None]
    if not planned:
        return {}
    return {"budget_mib": round(max(memory.budget for _, memory in planned) / MIB, 1),
            "measures": MEASURES if resets_allowed() else MEASURES_UNRESET,
            "cases": [{"case": label, **memory.record()} for label, memory in planned]}
