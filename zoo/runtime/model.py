"""``load(artifact_dir) -> ExportedModel``: an exported artifact run by onnxruntime or OpenVINO, no torch.

    model = zoo.load("artifacts/minilm")
    model.predict(["a sentence", "another"])          # raw inputs in, typed results out
    model(input_ids=ids, attention_mask=mask)         # the raw graph: arrays in, {output: array} out
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifact import MODEL_FILE, artifact_path, check_artifact, read_manifest
from zoo.errors import ArtifactError, ConfigError, InputError, UnsupportedTaskError, ZooWarning, first_line
from zoo.manifest import Manifest
from zoo.runtime import engines
from zoo.runtime.engines import ORT_LEVELS, Engine, Provider
from zoo.tasks.preprocess import numpy_dtype
from zoo.tasks import get_task


class UnverifiedArtifactWarning(ZooWarning):
    """An artifact that failed verification (kept with --keep-failed) was loaded on request."""


def load(artifact_dir: str | Path, *, providers: Sequence[Provider] | None = None, threads: int | None = None,
         check_hashes: bool = True, allow_unverified: bool = False, engine: str | None = None) -> ExportedModel:
    """Open an artifact: check its files against the manifest, start its engine, rebuild preprocessing.

    ``engine`` ("onnxruntime" | "openvino") defaults to the one the manifest names (onnxruntime
    unless ``zoo optimize`` chose OpenVINO), at the manifest's precision; an OpenVINO the manifest
    names but this machine lacks falls back to onnxruntime with an ``EngineFallbackWarning``.
    ``providers`` (onnxruntime's) defaults to CUDA when onnxruntime has it, else CPU. ``threads``
    sets the engine's intra-op thread count. Paths and sizes are always checked; sha256 and
    the golden tensors' headers too unless ``check_hashes=False`` (faster cold start for a
    trusted, read-only artifact). An artifact that failed verification (``zoo export
    --keep-failed``) is refused unless ``allow_unverified=True``, which loads it with an
    ``UnverifiedArtifactWarning``.
    """
    folder = Path(artifact_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    _check_manifest(folder, manifest)
    _check_verified(folder, manifest, allow_unverified)
    check_artifact(folder, manifest, full=check_hashes)  # confined paths, sizes, hashes: before any parse
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}; give a positive thread count, or None for the engine's default")
    chosen = _engine(manifest, engine, providers)
    level = _optimization(folder, manifest)
    session = engines.open_session(folder / MODEL_FILE, chosen, threads=threads, providers=providers,
                                   optimization=level)
    # an encoder-decoder's encoder.onnx (``preprocess.graphs``), in a session of the same kind
    companions = {name: engines.open_session(artifact_path(folder, record["file"]), chosen, threads=threads,
                                             providers=providers, optimization=level)
                  for name, record in (manifest.preprocess.get("graphs") or {}).items()}
    engines.release_freed_memory()
    return ExportedModel(folder, manifest, session, chosen, companions)


def _engine(manifest: Manifest, asked: str | None, providers: Sequence[Provider] | None) -> Engine:
    if asked == "openvino" and providers:
        raise ConfigError("execution providers are onnxruntime's; OpenVINO runs on the CPU: drop --provider, or "
                          "use --engine onnxruntime")
    chosen = engines.choose(manifest, asked)
    if chosen.name == "openvino" and providers:
        return Engine()  # providers given for an artifact that names OpenVINO: the caller asked for onnxruntime
    return chosen


def _check_verified(folder: Path, manifest: Manifest, allow: bool) -> None:
    if manifest.verified:
        return
    what = (f"{folder} failed verification when it was exported (kept by --keep-failed; manifest "
            "verified: false), so its outputs are not known to match the source model")
    if not allow:
        raise ArtifactError(f"{what}; refusing to load it. Inspect it with 'zoo verify {folder}', or load it "
                            "anyway with zoo.load(..., allow_unverified=True) / 'zoo predict --allow-unverified'")
    warnings.warn(f"{what}; loaded because allow_unverified was given", UnverifiedArtifactWarning, stacklevel=3)


def _optimization(folder: Path, manifest: Manifest) -> str:
    """The onnxruntime graph optimisation level the artifact was verified at ("all" unless recorded)."""
    export = manifest.spec.get("export") if isinstance(manifest.spec.get("export"), dict) else {}
    level = export.get("ort_optimization", "all")
    if level not in ORT_LEVELS:
        raise ArtifactError(f"{folder}/manifest.json: spec.export.ort_optimization '{level}' is not one of "
                            f"{', '.join(ORT_LEVELS)}; re-export the artifact")
    return level


def _check_manifest(folder: Path, manifest: Manifest) -> None:
    """Everything the runtime relies on beyond the manifest's own schema."""
    try:
        get_task(manifest.task)
    except UnsupportedTaskError as exc:
        raise ArtifactError(f"{folder}/manifest.json: {exc}; upgrade zoo-toolkit or re-export the artifact") from None


class ExportedModel:
    """One loaded artifact. Safe to call from several threads: nothing mutates after construction."""

    def __init__(self, folder: Path, manifest: Manifest, session: Any, engine: Engine | None = None,
                 companions: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self._manifest = manifest
        self._session = session
        self._sessions = {"model": session, **(companions or {})}
        self.engine: Engine = engine or Engine()
        self.task: str = manifest.task
        self._task = get_task(manifest.task)
        self._inputs = list(manifest.inputs)
        self._outputs: list[str] = manifest.output_names
        self._check_graph()
        self.labels: tuple[str, ...] | None = manifest.labels
        self._preprocess = self._task.runtime_preprocessor(folder, manifest)
        # a task whose predict runs several graphs in a loop (an encoder-decoder) brings the loop
        self._loop = self._task.generator(self._sessions, manifest, self._preprocess)

    def _check_graph(self) -> None:
        graph_inputs = [i.name for i in self._session.get_inputs()]
        graph_outputs = [o.name for o in self._session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.input_names) or not set(self._outputs) <= set(graph_outputs):
            raise ArtifactError(f"{self.folder}: the manifest says inputs {self.input_names} -> {self._outputs}, "
                                f"but model.onnx has inputs {graph_inputs} -> {graph_outputs}; re-export it")

    # ------------------------------------------------------------ description

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the artifact's manifest as JSON (name, task, labels, inputs, versions, verification, ...)."""
        return copy.deepcopy(self._manifest.to_dict())

    @property
    def manifest(self) -> Manifest:
        """The artifact's typed manifest (immutable)."""
        return self._manifest

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    @property
    def output_name(self) -> str:
        """The first (main) output's name."""
        return self._outputs[0]

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def signature(self) -> str:
        """What the raw graph expects, e.g. ``input_ids int64[batch, sequence], ...``."""
        return ", ".join(f"{i.name} {i.dtype}[{', '.join(map(str, i.shape))}]" for i in self._inputs)

    def __repr__(self) -> str:
        return (f"ExportedModel({self._manifest.name!r}, task={self.task!r}, engine={self.engine.label!r}, "
                f"providers={self.providers})")

    # ------------------------------------------------------------ raw graph

    def __call__(self, **arrays: Any) -> dict[str, np.ndarray]:
        """Run the graph on named arrays; return every graph output by name."""
        return self._run(self._checked(arrays))

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self._outputs, self._session.run(self._outputs, feed)))
        except Exception as exc:  # the engine's own types (onnxruntime's pybind errors, OpenVINO's RuntimeError)
            raise InputError(f"{self.engine.name} cannot run {self._manifest.name} on these inputs: {first_line(exc)}; "
                             "check the values (token ids inside the vocabulary, sizes the graph allows)") from exc

    def _checked(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        names = self.input_names
        missing = [n for n in names if n not in arrays]
        extra = [n for n in arrays if n not in names]
        if missing or extra:
            given = ", ".join(arrays) or "nothing"
            raise InputError(f"given {given}; the model expects {self.signature()}"
                             + (f" (missing: {', '.join(missing)})" if missing else "")
                             + (f" (unexpected: {', '.join(extra)})" if extra else ""))
        feed, axes = {}, {}
        for spec in self._inputs:
            feed[spec.name] = self._checked_array(spec, arrays[spec.name], axes)
        return feed

    def _checked_array(self, spec: Any, value: Any, axes: dict[str, tuple[str, int]]) -> np.ndarray:
        name, shape = spec.name, list(spec.shape)
        try:
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot convert
            raise InputError(f"{name} is not an array ({first_line(exc, 120)}); the model expects "
                             f"{self.signature()}") from exc
        want = np.dtype(numpy_dtype(spec.dtype))
        expects = f"the model expects {self.signature()}"
        if array.dtype != want:
            raise InputError(f"{name} has dtype {array.dtype}; {expects}: convert it with .astype(np.{want})")
        if array.ndim != len(shape):
            raise InputError(f"{name} has shape {tuple(array.shape)} ({array.ndim} dims); {expects}")
        for dim, (size, axis) in enumerate(zip(array.shape, shape)):
            if isinstance(axis, int) and size != axis:
                raise InputError(f"{name} has size {size} on axis {dim}, the model needs {axis}; {expects}")
            if isinstance(axis, str) and axis != "?":  # "?": an unnamed dynamic axis, free per input
                other = axes.setdefault(axis, (name, size))
                if other[1] != size:
                    raise InputError(f"{name} has {axis}={size} but {other[0]} has {axis}={other[1]}; "
                                     f"inputs sharing the '{axis}' axis must agree ({expects})")
        return np.ascontiguousarray(array)

    # ------------------------------------------------------------ raw inputs

    def preprocess(self, items: list[Any]) -> Any:
        """Raw inputs to the task's batch object (``.arrays`` holds the graph inputs)."""
        return self._preprocess(self._as_list(items))

    def predict(self, inputs: Any, *, batch_size: int = 32, **options: Any) -> Any:
        """Raw inputs (strings, image paths / PIL images / uint8 arrays, ...) to typed results.

        One input gives one result; a list gives a list. Options depend on the task
        (``top_k`` for classifiers; see the task's ``predict_options``).
        """
        single = self._task.is_single(inputs)
        items = [inputs] if single else self._as_list(inputs)
        results = [r for batch in self.predict_batches(items, batch_size=batch_size, **options) for r in batch]
        return results[0] if single else results

    def predict_batches(self, items: list[Any], *, batch_size: int = 32, **options: Any) -> Iterator[list[Any]]:
        """``predict`` one batch at a time: a list of results per ``batch_size`` inputs, in order.

        For callers that show progress or stream results to a file while a long list runs.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}; give a positive number of inputs per onnxruntime call")
        options = self._task.check_options(options)
        items = self._as_list(items)
        options = self._task.runtime_options(options, self) if items else options
        for start in range(0, len(items), batch_size):
            if self._task.generates or self._loop is not None:  # a language model: predict is generate
                yield self.generate(items[start:start + batch_size], **options)
                continue
            batch = self._preprocess(items[start:start + batch_size])
            outputs = self._run(batch.arrays)
            yield self._task.postprocess(outputs, batch, self.labels, self._manifest, **options)

    def embed_text(self, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Text embeddings [len(texts), dim] of an image-text model (zero-shot-image-classification), L2-normalised
        as the model defines them: compare with ``embed_images``' rows by dot product (retrieval)."""
        items = [texts] if isinstance(texts, str) else self._as_list(texts)
        return self._embed("text", items, batch_size)

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """Image embeddings [len(images), dim] of an image-text model (paths, PIL images or uint8 arrays), L2-normalised
        as the model defines them; see ``embed_text``."""
        items = [images] if self._task.is_single(images) else self._as_list(images)
        return self._embed("images", items, batch_size)

    def _embed(self, kind: str, items: list[Any], batch_size: int) -> np.ndarray:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}; give a positive number of inputs per onnxruntime call")
        parts = [self._task.embed(self._run, self._preprocess, kind, items[start:start + batch_size])
                 for start in range(0, max(len(items), 1), batch_size)]
        return np.concatenate(parts)

    def generate(self, prompts: str | Sequence[str], **options: Any) -> list[Any]:
        """New text after each prompt (a text-generation artifact): a list of ``Generation`` results.

        Options: ``max_new_tokens``, ``temperature`` (0: greedy), ``top_k``, ``top_p``,
        ``repetition_penalty``, ``stop`` (strings that end a continuation), ``seed``; each left out
        takes the model's ``generation_config.json`` default (``zoo.runtime.generate``).
        A text2text-generation artifact gives each text's output (translation, summary ...), with
        ``num_beams``, ``length_penalty``, ``early_stopping``, ``no_repeat_ngram_size``, ``tgt_lang`` /
        ``forced_bos_token_id`` besides (``zoo.tasks._seq2seq_text``).
        """
        items = [prompts] if isinstance(prompts, str) else self._as_list(prompts)
        if self._loop is not None:
            return self._loop.generate(items, **options)
        return self._generator(options).generate(items, **options)

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """One prompt's new text in pieces as it is generated (``generate``'s options); joined, they are
        ``generate``'s text: no character is split across pieces, and a stop string never shows."""
        if not isinstance(prompt, str):
            raise InputError(f"stream takes one prompt (a string), not {type(prompt).__name__}; use generate for many")
        return self._generator(options).stream(prompt, **options)

    def chat(self, messages: Any, **options: Any) -> Any:
        """The assistant's reply (a ``Generation``) to ``[{"role": ..., "content": ...}, ...]``, through the
        model's own chat template (jinja2, sandboxed); ``generate``'s options."""
        return self._generator(options).chat(messages, **options)

    def stream_chat(self, messages: Any, **options: Any) -> Iterator[str]:
        """``chat``'s reply in pieces as it is generated, as ``stream`` gives a prompt's; joined, they are
        ``chat``'s text. The messages are checked and rendered at the call, before the first piece."""
        generator = self._generator(options)
        return generator.stream(generator.chat_prompt(messages), special_tokens=False, **options)

    def chat_prompt(self, messages: Any) -> str:
        """The text ``chat`` continues for ``messages``: the model's chat template rendered (jinja2, sandboxed)."""
        return self._generator({}).chat_prompt(messages)

    def generator(self) -> Any:
        """The artifact's ``zoo.runtime.generate.Generator``: step by step generation, for servers and benchmarks."""
        return self._generator({})

    def _generator(self, options: dict[str, Any]) -> Any:
        from zoo.runtime.generate import Generator

        if not self._task.generates:
            raise InputError(f"generate needs a text-generation artifact; this one is {self.task}: use predict")
        self._task.check_options(options)
        return Generator(self._session, self._manifest, self._preprocess)

    def _as_list(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, (bytes, bytearray, memoryview)):
            # iterating raw bytes yields ints: say what was given, not "input 0 is int"
            raise InputError(f"predict got raw bytes ({type(inputs).__name__}); this {self.task} model expects "
                             f"{self._task.expects} (one, or a list): decode text with data.decode('utf-8'), an "
                             "encoded image with PIL.Image.open(io.BytesIO(data))")
        if not isinstance(inputs, Iterable) or isinstance(inputs, dict):
            raise InputError(f"predict got {type(inputs).__name__}; this {self.task} model expects "
                             f"{self._task.expects} (one, or a list)")
        return list(inputs)
