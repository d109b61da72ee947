"""The engines that run an artifact's model.onnx: onnxruntime (the default) and OpenVINO (an optional extra).

    session = open_session(folder / "model.onnx", Engine("openvino", "bf16"), threads=1)
    outputs = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})

Every engine hands back an object with onnxruntime's ``InferenceSession`` surface that
the runtime, verification and the optimisation gates use: ``get_inputs()`` and
``get_outputs()`` (items with ``.name``, in the graph's order), ``run(names, feed)`` (a list
in the order of ``names``) and ``get_providers()``. OpenVINO reads model.onnx itself; its
precision is an engine setting (``INFERENCE_PRECISION_HINT``), never a rewritten graph, so
an artifact's engine and precision are recorded in its manifest (``engine``) and its golden
data are written under them. No torch here.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ArtifactError, ConfigError, ZooWarning, first_line
from zoo.manifest import ENGINES, PRECISIONS, Manifest
from zoo.tasks import get_task

DEFAULT_ENGINE = "onnxruntime"
# the CPU features (as /proc/cpuinfo names them) of which one gives bf16 arithmetic, not only bf16 storage
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
OPENVINO_EXTRA = "pip install 'zoo-toolkit[openvino]'"


class EngineFallbackWarning(ZooWarning):
    """The manifest names an engine that is not installed here; the artifact runs on onnxruntime instead."""


@dataclass(frozen=True)
class Engine:
    """An engine and the precision it computes in (``f32`` or ``bf16``; onnxruntime computes what the graph says)."""

    name: str = DEFAULT_ENGINE
    precision: str = "f32"

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"engine '{self.name}' is not one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.name == "onnxruntime" and self.precision != "f32":
            raise ConfigError(f"precision {self.precision} is an OpenVINO setting; onnxruntime runs the graph's own "
                              "types: use engine openvino")

    @property
    def label(self) -> str:
        return self.name if self.precision == "f32" and self.name == DEFAULT_ENGINE else f"{self.name} {self.precision}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "precision": self.precision}


def recorded(manifest: Manifest) -> Engine:
    """The engine and precision the artifact was verified on (onnxruntime f32 unless its manifest names one)."""
    record = manifest.engine or {}
    return Engine(record.get("name", DEFAULT_ENGINE), record.get("precision", "f32"))


def choose(manifest: Manifest, asked: str | None = None) -> Engine:
    """The engine to run an artifact on: ``asked`` when given (at the manifest's precision if it is that engine,
    else f32), else the manifest's; an absent OpenVINO named only by the manifest falls back to onnxruntime."""
    own = recorded(manifest)
    if (asked or own.name) == "openvino" and get_task(manifest.task).generates:
        raise ConfigError(f"{manifest.name} is a text-generation artifact, which runs on onnxruntime only "
                          "(OpenVINO is not supported for generation yet): use --engine onnxruntime")
    if asked is not None:
        require(asked)
        return own if asked == own.name else Engine(asked)
    if own.name == "openvino" and not installed("openvino"):
        warnings.warn(f"{manifest.name} was verified on OpenVINO {own.precision}, which is not installed here; "
                      f"running it on onnxruntime f32 instead ({OPENVINO_EXTRA} for its own engine)",
                      EngineFallbackWarning, stacklevel=3)
        return Engine()
    return own


def installed(name: str) -> bool:
    if name == "onnxruntime":
        return True
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require(name: str) -> None:
    """One line naming the extra when an engine asked for explicitly is not installed."""
    if name not in ENGINES:
        raise ConfigError(f"engine '{name}' is not one of {', '.join(ENGINES)}; e.g. --engine openvino")
    if not installed(name):
        raise ConfigError(f"engine {name} is not installed; install it with: {OPENVINO_EXTRA}")


def open_session(path: Path, engine: Engine, *, threads: int | None = None, **onnxruntime: Any) -> Any:
    """A session of ``engine`` on ``path``; ``onnxruntime`` options (providers, optimisation) go to that engine only."""
    if engine.name == "openvino":
        return OpenVINOSession(path, engine.precision, threads)
    return onnxruntime_session(path, threads=threads, **onnxruntime)


# ---------------------------------------------------------------- onnxruntime

# onnxruntime graph optimisation levels by the names a manifest records (spec.export.ort_optimization)
ORT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
              "disabled": "ORT_DISABLE_ALL"}
Provider = str | tuple[str, dict[str, Any]]


def onnxruntime_session(path: Path, *, providers: Sequence[Provider] | None = None, threads: int | None = None,
                        optimization: str = "all") -> Any:
    """A session at the verified optimisation level. onnxruntime's CPU memory arena stays on, decoders
    included: a decoder's tensors change shape at every step, and the arena keeps the blocks it grew (a
    2,048-token SmolLM2 context peaks about 30 MB higher), but SmolLM2's packed graph decodes 6-8% faster
    with it (quiet 2-core EPYC, in turns: 35.8 vs 38.1 ms per token at 1 thread, 23.2 vs 25.1 at 2)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        # CUDA first when this onnxruntime build has it; CPU stays as the fallback for unsupported ops
        providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    providers = [provider_name(p, available) if isinstance(p, str) else (provider_name(p[0], available), p[1])
                 for p in providers]
    options = ort.SessionOptions()
    # the level the export was verified at: a graph that drifted under a fusion is opened without it
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[optimization])
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ArtifactError(f"onnxruntime cannot open {path}: {first_line(exc)}; "
                            "the file is damaged or needs a newer onnxruntime") from exc


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    onnxruntime parses model.onnx into memory, copies the weights into its own (pre-packed) buffers
    and frees the parsed copy, but glibc keeps most of those pages resident: a SmolLM2-135M session
    holds about 1,070 MiB after loading without this, 725 MiB with it.
    """
    if sys.platform == "win32":
        return
    import ctypes

    # the process's own symbols: libc is loaded already (ctypes.util.find_library would run ldconfig each load)
    process = ctypes.CDLL(None)
    if hasattr(process, "malloc_trim"):  # glibc; musl and macOS have none
        process.malloc_trim(0)


def provider_name(name: str, available: Sequence[str]) -> str:
    """onnxruntime's name for an execution provider: 'cpu' / 'cuda' / 'CUDAExecutionProvider' ..."""
    wanted = name.strip().lower().removesuffix("executionprovider")
    match = next((p for p in available if p.lower().removesuffix("executionprovider") == wanted), None)
    if match is None:
        raise ConfigError(f"execution provider '{name}' is not in this onnxruntime build; available: "
                          f"{', '.join(available)} (or their short names, e.g. cpu, cuda; install onnxruntime-gpu "
                          "for CUDA)")
    return match


# ---------------------------------------------------------------- OpenVINO


@dataclass(frozen=True)
class Port:
    """A graph input or output as onnxruntime's ``NodeArg`` shows it (the name is what callers use)."""

    name: str


class OpenVINOSession:
    """model.onnx compiled by OpenVINO for the CPU, behind onnxruntime's session surface.

    The precision is always set, f32 included: OpenVINO's own default on a CPU with bf16
    compute is bf16, and an artifact verified in float32 must run in float32.
    """

    def __init__(self, path: Path, precision: str, threads: int | None):
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line trace of its own
            raise ArtifactError(f"OpenVINO cannot compile {path}: {first_line(exc)}; run it on onnxruntime "
                                "(--engine onnxruntime) or upgrade openvino") from exc
        self.precision = precision
        self._inputs = [Port(p.get_any_name()) for p in self._compiled.inputs]
        self._outputs = [Port(p.get_any_name()) for p in self._compiled.outputs]
        self._local = threading.local()  # an infer request per calling thread: a request runs one call at a time

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all, in graph order, for None), looked up by name: never by position."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer(feed, share_outputs=False)
        by_name = {port.get_any_name(): results[port] for port in self._compiled.outputs}
        wanted = [p.name for p in self._outputs] if names is None else list(names)
        return [np.asarray(by_name[name]) for name in wanted]


# ---------------------------------------------------------------- the CPU


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them; empty where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def bf16_compute() -> tuple[bool, str]:
    """(whether this CPU computes in bf16, the evidence): the CPU flags on Linux, else OpenVINO's own report."""
    flags = cpu_flags()
    if flags:
        have = [f for f in BF16_FLAGS if f in flags]
        return bool(have), f"has {', '.join(have)}" if have else f"lacks {' and '.join(BF16_FLAGS)}"
    if installed("openvino"):
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "BF16" in caps, f"OpenVINO reports {'' if 'BF16' in caps else 'no '}BF16 capability"
    return False, f"no /proc/cpuinfo on {platform.system()} and no OpenVINO to ask"


def relevant_flags() -> list[str]:
    """The flags that decide between the recipes: AVX2, AVX-512, VNNI (int8), bf16 and AMX."""
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    flags = cpu_flags()
    return [f for f in keep if f in flags]


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or f"unknown CPU ({os.cpu_count()} cores)"
