"""The models a server holds: loaded artifacts, their protocol metadata, and their batchers.

Everything is read through the public runtime (``zoo.load`` / ``ExportedModel``):
the manifest copy in ``.info`` for names, datatypes and axes, ``__call__`` for
tensors in and out, ``.predict`` for raw inputs to typed results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifact import MODEL_FILE
from zoo.errors import ArtifactError, ConfigError, ZooError, first_line
from zoo.serve.batching import DynamicBatcher, Feed, TensorLayout, length_buckets, run_tensor_batch
from zoo.serve.errors import RequestError
from zoo.serve.names import PLATFORM, VERSION, datatype_of, parse_artifact_arg
from zoo.serve.protocol import MetadataTensor, ModelMetadata

# What a text model's tokenizer pads each input with; other inputs are never padded by the server.
_TEXT_PADDING = {"input_ids": "pad_token_id", "attention_mask": None, "token_type_ids": "pad_type_id"}
# A text model's inputs that are row numbers of an embedding table, whether or not the graph shows the lookup.
_TOKEN_INDEX_INPUTS = ("input_ids", "token_type_ids")


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 32 << 20
    instances: int = 2  # batches of one model that run at once (Triton's instance count; its CPU default is 2)
    threads: int | None = None  # onnxruntime intra-op threads per call; None: the cores shared by the instances
    check_hashes: bool = True
    generations: int = 2  # text generations of one model that decode at once (each holds a thread throughout)
    generation_queue: int = 16  # more that wait for one of those; a request past them gets 429
    engine: str | None = None  # "onnxruntime" | "openvino"; None: the engine each artifact's manifest names

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} must be at least {low}" for name, low in
                    (("max_batch_size", 1), ("max_wait_ms", 0), ("max_body_bytes", 1024), ("instances", 1),
                     ("generations", 1), ("generation_queue", 0))
                    if getattr(self, name) < low]
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads={self.threads} must be at least 1")
        if problems:
            raise ConfigError("serve settings: " + "; ".join(problems))

    def onnx_threads(self) -> int:
        """Intra-op threads per call: the cores divided among the instances, so they do not fight over them."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.instances)


@dataclass(frozen=True)
class PredictJob:
    """One /predict request: raw inputs (strings, PIL images, ...) and the task's predict options."""

    inputs: list[Any]
    options: tuple[tuple[str, Any], ...] = ()  # e.g. (("top_k", 3),): hashable, so jobs group by it


@dataclass(frozen=True)
class InputLimits:
    """What a model takes beyond datatypes and shapes, checked before a request joins a batch."""

    max_tokens: int | None = None  # the longest 'sequence' axis: the manifest's preprocess.max_length
    id_rows: dict[str, int | None] = field(default_factory=dict)  # index input -> rows of its table (None: unknown)

    def check(self, model: str, name: str, array: np.ndarray, spec: dict[str, Any]) -> None:
        axes = list(spec.get("shape", []))
        if self.max_tokens is not None and "sequence" in axes:
            given = array.shape[axes.index("sequence")]
            if given > self.max_tokens:
                raise RequestError(f"input '{name}' has {given} tokens; model '{model}' takes at most "
                                   f"{self.max_tokens} (max_length in its manifest): truncate to {self.max_tokens} "
                                   f"as its tokenizer does, or send raw texts to POST /v1/models/{model}/predict, "
                                   "which truncates them")
        if name in self.id_rows and array.size:
            self._check_ids(name, array, self.id_rows[name])

    @staticmethod
    def _check_ids(name: str, array: np.ndarray, rows: int | None) -> None:
        outside = array < 0 if rows is None else (array < 0) | (array >= rows)
        if not outside.any():
            return
        at = np.argwhere(outside)[0]
        valid = f"ids run from 0 to {rows - 1} (the {rows} rows of the table it indexes)" if rows is not None else (
            "ids cannot be negative (the size of the table it indexes is not known here, so ids past its end are "
            "left to onnxruntime)")
        raise RequestError(f"input '{name}' holds {int(array[tuple(at)])} at {[int(i) for i in at]}; {valid}")


@dataclass
class ServedModel:
    name: str
    model: Any  # zoo.runtime.ExportedModel
    settings: ServeSettings
    info: dict[str, Any] = field(init=False)
    layout: TensorLayout = field(init=False)
    limits: InputLimits = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)
    tensors: DynamicBatcher[Feed, Feed] | None = field(default=None, init=False)
    raw: DynamicBatcher[PredictJob, list[Any]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.info = self.model.info  # one copy of the manifest: .info deep-copies it on every access
        self.layout = tensor_layout(self.info)
        self.limits = input_limits(self.info, self.model.folder / MODEL_FILE)
        self.executor = ThreadPoolExecutor(max_workers=self.settings.instances,
                                           thread_name_prefix=f"zoo-serve-{self.name}")

    @property
    def task(self) -> str:
        return str(self.model.task)

    def start(self, metrics: Any) -> None:
        """Start the batchers (needs the running event loop)."""
        common = {"max_batch_size": self.settings.max_batch_size, "max_wait_s": self.settings.max_wait_ms / 1000,
                  "instances": self.settings.instances}
        self.tensors = DynamicBatcher(self.run_tensors, self.executor, **common,
                                      on_batch=metrics.batch_observer(self.name),
                                      on_queue=metrics.queue_observer(self.name, "infer"))
        self.raw = DynamicBatcher(self.run_predict, self.executor, **common,
                                  on_batch=metrics.batch_observer(self.name),
                                  on_queue=metrics.queue_observer(self.name, "predict"))
        self.tensors.start()
        self.raw.start()

    async def stop(self) -> None:
        for batcher in (self.tensors, self.raw):
            if batcher is not None:
                await batcher.stop()
        self.executor.shutdown(wait=True)

    # ------------------------------------------------------------ metadata

    def metadata(self) -> ModelMetadata:
        info = self.info
        return ModelMetadata(name=self.name, versions=[VERSION], platform=PLATFORM,
                             inputs=[_tensor_metadata(t) for t in info["inputs"]],
                             outputs=[_tensor_metadata(t) for t in info["outputs"]])

    def output_names(self) -> list[str]:
        return [t["name"] for t in self.info["outputs"]]

    # ------------------------------------------------------------ tensors

    def checked_feed(self, tensors: dict[str, np.ndarray]) -> tuple[Feed, int]:
        """The request's tensors checked against the model's inputs; also the batch rows they hold."""
        specs = {t["name"]: t for t in self.info["inputs"]}
        expects = "the model expects " + ", ".join(_describe(t) for t in specs.values())
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        if missing or extra:
            raise RequestError(f"inputs given: {', '.join(tensors)}; {expects}"
                               + (f" (missing {', '.join(missing)})" if missing else "")
                               + (f" (unknown {', '.join(extra)})" if extra else ""))
        axes: dict[str, tuple[str, int]] = {}
        for name, spec in specs.items():
            _check_tensor(name, tensors[name], spec, axes, expects)
            self.limits.check(self.name, name, tensors[name], spec)
        rows = int(tensors[next(iter(specs))].shape[0]) if self.layout.batchable else 1
        return {name: tensors[name] for name in specs}, rows

    def run_tensors(self, feeds: list[Feed]) -> list[Feed]:
        """Worker thread: the feeds of several requests through as few graph calls as their shapes allow."""
        return run_tensor_batch(self._call_graph, self.layout, feeds)

    def _call_graph(self, feed: Feed) -> Feed:
        try:
            return self.model(**feed)
        except ZooError:
            raise
        except Exception as exc:  # onnxruntime's own errors: an index out of range, a size the graph refuses
            raise RequestError(f"onnxruntime could not run '{self.name}' on these inputs: {first_line(exc)}") \
                from None

    # ------------------------------------------------------------ raw inputs

    def run_predict(self, jobs: list[PredictJob]) -> list[list[Any] | BaseException]:
        """Worker thread: all jobs' raw inputs in one ``predict`` call per distinct options; results split back."""
        results: list[list[Any] | BaseException] = [[] for _ in jobs]
        for options in sorted({job.options for job in jobs}):
            group = [i for i, job in enumerate(jobs) if job.options == options]
            # texts are padded to the longest of a call: keep lengths alike (characters stand in for tokens)
            sizes = [(len(jobs[i].inputs), max((len(x) if isinstance(x, str) else 1 for x in jobs[i].inputs),
                                               default=1)) for i in group]
            for bucket in length_buckets(sizes):
                members = [group[j] for j in bucket]
                flat = [x for i in members for x in jobs[i].inputs]
                # one request's long list of inputs still runs max_batch_size at a time
                predictions = self.model.predict(flat, batch_size=self.settings.max_batch_size, **dict(options))
                start = 0
                for i in members:
                    results[i] = list(predictions[start:start + len(jobs[i].inputs)])
                    start += len(jobs[i].inputs)
        return results


def _tensor_metadata(tensor: dict[str, Any]) -> MetadataTensor:
    return MetadataTensor(name=tensor["name"], datatype=datatype_of(tensor.get("dtype", "float32")),
                          shape=[d if isinstance(d, int) else -1 for d in tensor.get("shape", [])])


def _describe(tensor: dict[str, Any]) -> str:
    meta = _tensor_metadata(tensor)
    return f"{meta.name} {meta.datatype}{meta.shape}"


def _check_tensor(name: str, array: np.ndarray, spec: dict[str, Any], axes: dict[str, tuple[str, int]],
                  expects: str) -> None:
    want = datatype_of(spec.get("dtype", "float32"))
    got = datatype_of(array.dtype)
    if got != want:
        raise RequestError(f"input '{name}' has datatype {got}; {expects}")
    shape = list(spec.get("shape", []))
    if array.ndim != len(shape):
        raise RequestError(f"input '{name}' has shape {list(array.shape)} ({array.ndim} axes); {expects}")
    for dim, (size, axis) in enumerate(zip(array.shape, shape)):
        if isinstance(axis, int) and size != axis:
            raise RequestError(f"input '{name}' has size {size} on axis {dim} where the model needs {axis}; "
                               f"{expects}")
        if isinstance(axis, str) and axis != "?":
            first = axes.setdefault(axis, (name, size))
            if first[1] != size:
                raise RequestError(f"input '{name}' has {axis}={size} but '{first[0]}' has {axis}={first[1]}; "
                                   f"inputs that share the '{axis}' axis must agree")


def tensor_layout(info: dict[str, Any]) -> TensorLayout:
    """Axis names of every tensor, and which inputs a text model pads with what (from the manifest)."""
    axes = {t["name"]: [d if isinstance(d, str) else None for d in t.get("shape", [])]
            for t in [*info["inputs"], *info["outputs"]]}
    pp = info.get("preprocess") or {}
    pad_values: dict[str, int | float] = {}
    if pp.get("max_length"):
        for name in axes:
            if name in _TEXT_PADDING:
                key = _TEXT_PADDING[name]
                pad_values[name] = int(pp.get(key) or 0) if key else 0
    return TensorLayout(axes=axes, pad_values=pad_values, padding_side=pp.get("padding_side") or "right")


def input_limits(info: dict[str, Any], graph: Path) -> InputLimits:
    """The longest sequence (text models' manifest) and the id range of every input that indexes a table."""
    max_length = (info.get("preprocess") or {}).get("max_length")
    rows: dict[str, int | None] = dict(embedding_rows(graph))
    if max_length:
        names = {t["name"] for t in info["inputs"]}
        for name in _TOKEN_INDEX_INPUTS:
            if name in names:
                rows.setdefault(name, None)
    return InputLimits(int(max_length) if max_length else None, rows)


def embedding_rows(graph: Path) -> dict[str, int]:
    """Rows of the table each graph input indexes directly (a Gather of an initializer by that input).

    onnxruntime reads a negative index from the end of the table and names the
    bounds only in its error text; the server refuses such ids itself, by name.
    """
    import onnx

    proto = onnx.load(str(graph), load_external_data=False).graph
    inputs = {i.name for i in proto.input}
    tables = {t.name: list(t.dims) for t in proto.initializer}
    rows: dict[str, int] = {}
    for node in proto.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        table, indices = node.input
        if indices in inputs and table in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            size = tables[table][axis]
            rows[indices] = min(size, rows.get(indices, size))
    return rows


# ---------------------------------------------------------------- loading


def load_models(artifacts: Sequence[str | Path], settings: ServeSettings) -> list[ServedModel]:
    """Load every artifact before any traffic; any failure stops the start with every problem in one message."""
    from zoo.runtime import load

    named = [parse_artifact_arg(str(a)) for a in artifacts]
    if not named:
        raise ConfigError("no artifact to serve; give one or more artifact folders (zoo export ... --onnx)")
    seen: dict[str, Path] = {}
    problems: list[str] = []
    for name, path in named:
        if name in seen:
            problems.append(f"two artifacts would be served as '{name}' ({seen[name]} and {path}): "
                            "name them, e.g. a=PATH b=PATH")
        seen[name] = path
    served = []
    for name, path in named:
        try:
            served.append(ServedModel(name, load(path, threads=settings.onnx_threads(), engine=settings.engine,
                                                 check_hashes=settings.check_hashes), settings))
        except ZooError as exc:
            problems.append(f"'{name}': {exc}")
    if problems:
        raise ArtifactError("cannot serve: " + " | ".join(problems))
    return served
