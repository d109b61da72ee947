"""``load(artifact_dir) -> ExportedModel``: an exported artifact run by onnxruntime, no torch.

    model = zoo.load("artifacts/minilm")
    model.predict(["a sentence", "another"])          # raw inputs in, typed results out
    model(input_ids=ids, attention_mask=mask)         # the raw graph: arrays in, {output: array} out
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from zoo.artifact import MODEL_FILE, check_files, read_manifest
from zoo.errors import ArtifactError, ConfigError, InputError
from zoo.runtime.preprocess import ImagePreprocessor, TextBatch, TextPreprocessor, numpy_dtype
from zoo.runtime.results import Classification, Embedding, Entity, Prediction, TokenClassification
from zoo.spec import TASKS

Provider = Union[str, tuple[str, dict[str, Any]]]
# ignore_labels of transformers' token-classification pipeline: words outside any entity
OUTSIDE = "O"


def load(artifact_dir: str | Path, *, providers: Sequence[Provider] | None = None, threads: int | None = None,
         check_hashes: bool = True) -> ExportedModel:
    """Open an artifact: check its files against the manifest, start onnxruntime, rebuild preprocessing.

    ``providers`` defaults to CUDA when onnxruntime has it, else CPU. ``threads`` sets
    onnxruntime's intra-op thread count. Sizes are always checked; sha256 too unless
    ``check_hashes=False`` (faster cold start for a trusted, read-only artifact).
    """
    folder = Path(artifact_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    _check_manifest(folder, manifest)
    problems = check_files(folder, manifest, full=check_hashes)
    if problems:
        raise ArtifactError(f"artifact {folder} does not match its manifest, refusing to load it: "
                            + "; ".join(problems) + ". Re-export it (zoo export), or copy it again intact")
    session = _session(folder / MODEL_FILE, providers, threads)
    return ExportedModel(folder, manifest, session)


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Everything the runtime relies on, all problems at once."""
    problems = []
    if manifest.get("task") not in TASKS:
        problems.append(f"task {manifest.get('task')!r} is not one of {', '.join(TASKS)}")
    if not manifest.get("inputs"):
        problems.append("no 'inputs' list")
    if not manifest.get("outputs"):
        problems.append("no 'outputs' list")
    if MODEL_FILE not in (manifest.get("files") or {}):
        problems.append(f"'files' does not list {MODEL_FILE} (so it cannot be checked)")
    if problems:
        raise ArtifactError(f"{folder}/manifest.json cannot be run: " + "; ".join(problems)
                            + ". Re-export the artifact with 'zoo export NAME --onnx'")


def _session(path: Path, providers: Sequence[Provider] | None, threads: int | None) -> Any:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        # CUDA first when this onnxruntime build has it; CPU stays as the fallback for unsupported ops
        providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    unknown = [p if isinstance(p, str) else p[0] for p in providers]
    unknown = [p for p in unknown if p not in available]
    if unknown:
        raise ConfigError(f"execution provider(s) {', '.join(unknown)} are not in this onnxruntime build; "
                          f"available: {', '.join(available)} (install onnxruntime-gpu for CUDA)")
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads={threads}; give a positive thread count, or None for onnxruntime's default")
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ArtifactError(f"onnxruntime cannot open {path}: {str(exc).splitlines()[0][:300]}; "
                            "the file is damaged or needs a newer onnxruntime") from exc


class ExportedModel:
    """One loaded artifact. Safe to call from several threads: nothing mutates after construction."""

    def __init__(self, folder: Path, manifest: dict[str, Any], session: Any):
        self.folder = Path(folder)
        self._manifest = manifest
        self._session = session
        self.task: str = manifest["task"]
        self._inputs: list[dict[str, Any]] = list(manifest["inputs"])
        self._output: str = manifest["outputs"][0]["name"]
        self._check_graph()
        self.labels: tuple[str, ...] | None = tuple(manifest["labels"]) if manifest.get("labels") else None
        self._preprocess = (ImagePreprocessor(folder, manifest) if self.task == "image-classification"
                            else TextPreprocessor(folder, manifest))

    def _check_graph(self) -> None:
        graph_inputs = [i.name for i in self._session.get_inputs()]
        graph_outputs = [o.name for o in self._session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.input_names) or self._output not in graph_outputs:
            raise ArtifactError(f"{self.folder}: the manifest says inputs {self.input_names} -> {self._output}, "
                                f"but model.onnx has inputs {graph_inputs} -> {graph_outputs}; re-export it")

    # ------------------------------------------------------------ description

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the artifact's manifest (name, task, labels, inputs, versions, verification, ...)."""
        return copy.deepcopy(self._manifest)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self._inputs]

    @property
    def output_name(self) -> str:
        return self._output

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def signature(self) -> str:
        """What the raw graph expects, e.g. ``input_ids int64[batch, sequence], ...``."""
        return ", ".join(f"{i['name']} {i.get('dtype')}[{', '.join(map(str, i.get('shape', [])))}]"
                         for i in self._inputs)

    def __repr__(self) -> str:
        return (f"ExportedModel({self._manifest.get('name', self.folder.name)!r}, task={self.task!r}, "
                f"providers={self.providers})")

    # ------------------------------------------------------------ raw graph

    def __call__(self, **arrays: Any) -> dict[str, np.ndarray]:
        """Run the graph on named arrays; return every graph output by name."""
        feed = self._checked(arrays)
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feed)))

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([self._output], feed)[0]

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
            feed[spec["name"]] = self._checked_array(spec, arrays[spec["name"]], axes)
        return feed

    def _checked_array(self, spec: dict[str, Any], value: Any, axes: dict[str, tuple[str, int]]) -> np.ndarray:
        name, shape = spec["name"], list(spec.get("shape", []))
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        want = np.dtype(numpy_dtype(spec.get("dtype", "float32")))
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

    def predict(self, inputs: Any, *, top_k: int = 1, batch_size: int = 32) -> Prediction | list[Prediction]:
        """Raw inputs (strings, or image paths / PIL images / uint8 arrays) to typed results.

        One input gives one result; a list gives a list. Classifiers return
        ``Classification`` (top_k labels and softmax scores), token classifiers
        ``TokenClassification`` (entity spans), feature extractors ``Embedding``.
        """
        if top_k < 1 or batch_size < 1:
            raise InputError(f"top_k={top_k}, batch_size={batch_size}; both must be at least 1")
        single = self._is_single(inputs)
        items = [inputs] if single else self._as_list(inputs)
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            results.extend(self._predict_batch(items[start:start + batch_size], top_k))
        return results[0] if single else results

    def _is_single(self, inputs: Any) -> bool:
        if self.task == "image-classification":
            from PIL import Image

            return isinstance(inputs, (str, Path, Image.Image, np.ndarray))
        return isinstance(inputs, str)

    def _as_list(self, inputs: Any) -> list[Any]:
        kind = "image paths, PIL images or uint8 arrays" if self.task == "image-classification" else "strings"
        if not isinstance(inputs, Iterable):
            raise InputError(f"predict got {type(inputs).__name__}; this {self.task} model expects {kind} "
                             "(one, or a list)")
        return list(inputs)

    def _predict_batch(self, items: list[Any], top_k: int) -> list[Prediction]:
        if self.task == "image-classification":
            return self._classify(self._run(self._preprocess(items)), top_k)
        batch = self._preprocess(items)
        output = self._run(batch.arrays)
        if self.task == "text-classification":
            return self._classify(output, top_k)
        if self.task == "token-classification":
            return [self._entities(text, output[i], batch, i) for i, text in enumerate(items)]
        return self._embeddings(output, batch)

    # ------------------------------------------------------------ post-processing

    def _label(self, index: int) -> str:
        # transformers names unlabelled classes LABEL_i; do the same so the two paths agree
        return self.labels[index] if self.labels and index < len(self.labels) else f"LABEL_{index}"

    def _classify(self, logits: np.ndarray, top_k: int) -> list[Prediction]:
        probs = softmax(logits.astype(np.float32))
        k = min(top_k, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [Classification(labels=tuple(self._label(int(j)) for j in row),
                               scores=tuple(float(p[j]) for j in row)) for p, row in zip(probs, order)]

    def _entities(self, text: str, logits: np.ndarray, batch: TextBatch, row: int) -> TokenClassification:
        words = _words(softmax(logits.astype(np.float32)), batch.word_ids[row], batch.special[row],
                       batch.offsets[row])
        labelled = [(self._label(idx), score, start, end) for idx, score, start, end in words]
        entities = tuple(Entity(label=label, score=score, start=start, end=end, word=text[start:end])
                         for label, score, start, end in group_entities(labelled) if label != OUTSIDE)
        return TokenClassification(text=text, entities=entities)

    def _embeddings(self, output: np.ndarray, batch: TextBatch) -> list[Prediction]:
        mask = batch.arrays.get("attention_mask")
        if output.ndim == 3:
            pp = self._manifest.get("preprocess") or {}
            if mask is None:
                raise ArtifactError("per-token output without an attention_mask input: cannot tell padding apart")
            if pp.get("pooling"):
                pooled = pool(output, mask, pp["pooling"])
                if pp.get("normalize"):
                    pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                return [Embedding(v) for v in pooled]
            return [Embedding(h[m.astype(bool)]) for h, m in zip(output, mask)]
        return [Embedding(v) for v in output]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers pooling in numpy (used when the graph returns per-token states)."""
    m = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(1)
    if mode == "lasttoken":
        last = np.maximum(mask.sum(1).astype(np.int64) - 1, 0)
        return hidden[np.arange(hidden.shape[0]), last]
    raise ArtifactError(f"pooling '{mode}' in the manifest; valid: cls, mean, max, lasttoken")


def _words(probs: np.ndarray, word_ids: list[int | None], special: list[int],
           offsets: list[tuple[int, int]]) -> list[tuple[int, float, int, int]]:
    """(class, score, start, end) per word, labelled by its first token (transformers' "first" strategy)."""
    words: list[tuple[int, float, int, int]] = []
    last_word = None
    for t, word in enumerate(word_ids):
        if special[t] or word is None:
            continue
        if word == last_word:
            idx, score, start, _ = words[-1]
            words[-1] = (idx, score, start, offsets[t][1])
            continue
        idx = int(probs[t].argmax())
        words.append((idx, float(probs[t][idx]), offsets[t][0], offsets[t][1]))
        last_word = word
    return words


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # a label without a B-/I- prefix continues a run of itself


def group_entities(words: list[tuple[str, float, int, int]]) -> list[tuple[str, float, int, int]]:
    """Merge adjacent words of one entity type (B-X starts a new span) into (type, mean score, start, end)."""
    groups: list[list[tuple[str, float, int, int]]] = []
    for word in words:
        bi, tag = _tag(word[0])
        if groups and bi != "B" and _tag(groups[-1][-1][0])[1] == tag:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [(_tag(g[0][0])[1], float(np.mean([w[1] for w in g])), g[0][2], g[-1][3]) for g in groups]
