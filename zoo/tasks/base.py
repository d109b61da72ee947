"""The one interface every task implements, stage by stage.

A task object answers every question a stage would otherwise answer by comparing
task strings:

| stage | methods |
| --- | --- |
| identity / sources | ``name``, ``modality``, ``claims_hf``, ``hf_auto_class``, ``timm_kwargs``, ``describe_hf`` |
| create | ``adapt_model`` (pooling wrapper ...), ``load_processor`` (tokenizer / image processor) |
| export | ``output_names``, ``output_axes``, ``axis_bounds``, ``export_module``, ``export_example``, |
|        | ``write_preprocessor``, ``model_record``, ``export_checks``, ``companion_graphs`` (an encoder beside |
|        | the decoder) |
| verify | ``grid``, ``memory_terms``, ``shrink_case`` (the memory plan), ``agreement``, ``preprocessor_problems``, |
|        | ``sequence_checks``, ``pipeline_checks`` (all graphs together) |
| optimize | ``optimization_gate`` (the accuracy gate of ``zoo optimize``) |
| runtime | ``runtime_preprocessor``, ``is_single``, ``input_suffixes``, ``runtime_options``, ``embed``, |
|         | ``postprocess``, ``predict_options``, ``generator`` (a loop over several graphs), |
|         | ``bench_items``, ``render`` (CLI table), ``save_pictures`` (``zoo predict --save``) |
| data | ``builtin_datasets`` (``builtin:NAME``), ``read_data`` (layouts only this task reads) |
| train | ``training_spec``, ``data_columns``, ``read_labels``, ``encode``, ``training_module``, ``training_loss``, |
|       | ``eval_batch``, ``metrics``, ``primary_metric``, ``metric_names`` |

Modality mixins (``_text.py``, ``_image.py``) implement what tasks of one input kind
share; a task module combines a modality with its own outputs, checks and results.
Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from zoo.checks import Check
from zoo.errors import DataError, InputError
from zoo.spec import ModelSpec, Preprocess, Tolerances
from zoo.tasks._memory import CaseMemory, ModelDims, input_terms, transformer_terms
from zoo.tasks._vectors import CosineGate


@dataclass(eq=False)
class Case:
    """One verification grid point: named graph inputs and the raw items they were made from."""

    kind: str  # short | padded | long | image | ...
    seed: int
    inputs: dict[str, np.ndarray]
    texts: list[str] = field(default_factory=list)  # text tasks: the strings behind the token ids
    raw: list[Any] = field(default_factory=list)  # other tasks: raw items (images, waveforms) when kept
    memory: CaseMemory | None = None  # the memory plan's estimate and the measured peaks (exporters.memory)

    @property
    def label(self) -> str:
        shape = "x".join(str(d) for d in next(iter(self.inputs.values())).shape)
        return f"{self.kind} [{shape}] seed {self.seed}"


@dataclass(eq=False)
class Companion:
    """A graph exported beside model.onnx (an encoder-decoder's encoder), verified on its own grid.

    ``spec`` is the main spec with the companion's inputs (the exporters and the grid read names, axes and
    outputs from it through the task); ``module`` is built from the main module, so both graphs share weights.
    """

    name: str  # the key of the manifest's ``preprocess.graphs`` record and of ``ExportedModel``'s sessions
    file: str  # beside model.onnx; its golden data goes to a folder of the same stem
    spec: ModelSpec
    module: Any
    cases: list[Case]
    example: dict[str, np.ndarray]


class Agreement(Protocol):
    """A task-level comparison of torch and onnxruntime outputs, accumulated over the grid."""

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None: ...

    def check(self) -> Check: ...


class Gate(Protocol):
    """``zoo optimize``'s task-level accuracy gate: a graph's first output against a reference, batch by batch."""

    limits: dict[str, float]  # the thresholds, recorded in the optimised artifact's manifest
    labelled: bool  # one label per input row: labelled data can also score the accuracy drop

    def add(self, reference: np.ndarray, got: np.ndarray, mask: np.ndarray | None) -> None: ...

    def checks(self, against: str, data: str) -> list[Check]: ...


class Task:
    """Base of every task. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    modality: ClassVar[str]  # text | image | audio
    summary: ClassVar[str] = ""
    # transformers: the architecture-name suffixes this task claims, and the auto class that builds it
    hf_heads: ClassVar[tuple[str, ...]] = ()
    hf_auto_class: ClassVar[str | None] = None
    hf_priority: ClassVar[int] = 0  # when two tasks claim one config, the higher wins
    timm: ClassVar[bool] = False  # timm models can serve this task
    timm_default: ClassVar[bool] = False  # the task of a bare timm:ARCH name
    has_labels: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    primary_metric: ClassVar[str] = "val_loss"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss",)  # what ``metrics`` reports, plus val_loss
    expects: ClassVar[str] = "inputs"  # what predict takes, for error messages
    input_fields: ClassVar[tuple[str, ...]] = ()  # texts one input is made of, named (question answering)
    predict_options: ClassVar[dict[str, type]] = {}  # keyword options of predict (top_k, threshold ...)
    derived_axes: ClassVar[tuple[str, ...]] = ()  # input axes that are sums of others (the exporter infers them)
    generates: ClassVar[bool] = False  # predict generates text token by token (zoo.runtime.generate)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------ identity / sources

    def claims_hf(self, architectures: list[str], model_type: str, sentence_transformers: bool) -> bool:
        """True when a transformers config with these architectures belongs to this task."""
        from zoo.tasks._modality import hf_modality

        if sentence_transformers or hf_modality(model_type) != self.modality:
            return False
        return any(a.endswith(head) for a in architectures for head in self.hf_heads)

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        """(inputs, preprocess, labels) of a save_pretrained folder, from its JSON files."""
        raise NotImplementedError

    def hf_model_class(self, spec: ModelSpec) -> str | None:
        """The transformers auto class that builds ``spec``: ``hf_auto_class`` unless one task runs heads of
        two kinds (speech recognition: CTC heads and Whisper's encoder-decoder)."""
        return self.hf_auto_class

    def labels_from_config(self, config: dict[str, Any]) -> tuple[str, ...] | None:
        """Class names a transformers config declares (``id2label``), for tasks that have labels."""
        return None

    def timm_kwargs(self, spec: ModelSpec) -> dict[str, Any]:
        """Extra ``timm.create_model`` arguments (e.g. ``num_classes=0`` for an embedder)."""
        return {}

    def adapt_model(self, model: Any, spec: ModelSpec) -> Any:
        """The created model as this task runs it (e.g. wrapped with pooling)."""
        return model

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any | None:
        """The source's own preprocessor (tokenizer, image processor) for export checks and training, read
        from the model's local ``folder`` (None where the source keeps no folder, e.g. a timm:ARCH name)."""
        return None

    # ------------------------------------------------------------ export

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        """Per output, its axes: a name for each axis that must stay dynamic, None for fixed ones."""
        return {name: ["batch", None] for name in self.output_names(spec)}

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        """Upper bounds of named dynamic axes for the dynamo exporter (batch is bounded by the exporter)."""
        return {}

    def select_outputs(self, output: Any, spec: ModelSpec) -> Any:
        """The exported tensors, in ``output_names`` order, from what the model's forward returned."""
        names = self.output_names(spec)
        if len(names) == 1:
            return _pick(output, names[0])
        return tuple(_pick(output, n) for n in names)

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        """A torch module taking the spec's inputs by name and returning the outputs in order."""
        from zoo.tasks._torch import task_module

        return task_module(model, spec, self)

    def graph_fusion(self, spec: ModelSpec) -> str | None:
        """The fusion recipe ``zoo export`` runs on this task's graph by default (``exporters.fusion.RECIPES``).

        "encoder": onnxscript's onnxruntime fusions (attention, LayerNorm, Gelu), exact within the export
        tolerances. A generating task's decoder graph with its KV cache needs its own recipe, so it opts
        in by overriding this; None exports the plain graph.
        """
        return None if self.generates else "encoder"

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        raise NotImplementedError

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        """Write preprocessor files into the artifact (``folder``: the model's local folder, if any); return the
        manifest's ``preprocess`` record."""
        raise NotImplementedError

    def model_record(self, module: Any) -> dict[str, Any]:
        """Values of the built torch module the runtime needs beside the graph, added to the manifest's
        ``preprocess`` record (zero-shot: the logit scale and bias); export_checks sees them."""
        return {}

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        """Checks of the written artifact beyond the graph (e.g. the torch-free tokenizer)."""
        return []

    # ------------------------------------------------------------ verify

    def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
        """Bytes the model's forward holds at once on ``case``, by term, estimated from shapes and dtype.

        The process and onnxruntime's copy of the weights are the planner's; a task adds what
        only it knows (sequence length, frames, image side, queries, a cache). This default,
        for a task that knows nothing more, counts every element of a row as a token.
        """
        first = next(iter(case.inputs.values()))
        return {**input_terms(case.inputs), **transformer_terms(dims, int(first.shape[0]), first[0].size)}

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        """A smaller ``case`` for the memory budget, None when it is as small as it gets.

        The default halves the batch, rows kept as they are: right for inputs whose rows do not
        depend on each other. Tasks with padded inputs remake the case (the padding follows the
        longest row), and shorten its sequence before they cut its batch.
        """
        batch = int(next(iter(case.inputs.values())).shape[0])
        if batch <= 1:
            return None
        keep = (batch + 1) // 2
        return Case(case.kind, case.seed, {k: v[:keep] for k, v in case.inputs.items()}, texts=case.texts[:keep],
                    raw=case.raw[:keep])

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Agreement:
        raise NotImplementedError

    def sequence_checks(self, module: Any, spec: ModelSpec, session: Any, cases: list[Case], tol: Tolerances,
                        compare: Callable[[np.ndarray, np.ndarray, Tolerances], bool]) -> list[Check]:
        """Checks that run the graph (an onnxruntime ``session``) step after step against ``module``, for tasks
        whose graph is called in a loop (a decoder fed its own cache); ``compare(torch, onnx, tol)`` is the
        verifier's tolerance rule."""
        return []

    def companion_graphs(self, module: Any, spec: ModelSpec, processor: Any,
                         seeds: tuple[int, ...]) -> list[Companion]:
        """Graphs exported beside model.onnx from the same ``module`` (an encoder-decoder's encoder). The exporter
        writes, verifies and records each (``preprocess.graphs``) after model.onnx passed; ``zoo verify`` replays
        their golden data and ``zoo.load`` opens them. None for one-graph tasks."""
        return []

    def pipeline_checks(self, module: Any, spec: ModelSpec, sessions: dict[str, Any], companions: list[Companion],
                        tol: Tolerances, compare: Callable[[np.ndarray, np.ndarray, Tolerances], bool]) -> list[Check]:
        """Checks that run model.onnx and its companion graphs together against ``module`` (``sessions`` by graph
        name, "model" for model.onnx), e.g. an encoder-decoder's generation; ``compare`` as in ``sequence_checks``."""
        return []

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        """What is missing or unreadable among the files the runtime needs to preprocess inputs."""
        return []

    # ------------------------------------------------------------ optimize

    def optimization_gate(self, tol: Tolerances) -> Gate:
        """The accuracy gate an optimised graph must pass against its parent (and torch) in ``zoo optimize``.

        ``tol``: a top-1 change within it of the reference's own margin is a tie. The
        default compares the first output's vectors by cosine similarity (minimum
        >= 0.99, mean >= 0.995), which fits any float output; classifiers override
        it with top-1 agreement.
        """
        return CosineGate()

    # ------------------------------------------------------------ runtime (torch-free)

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Callable[[list[Any]], Any]:
        """Raw items -> a batch object with ``.arrays`` (graph inputs by name)."""
        raise NotImplementedError

    def generator(self, sessions: dict[str, Any], manifest: Any, preprocessor: Any) -> Any | None:
        """The runtime loop of a task whose predict runs several graphs (an encoder-decoder), with a
        ``generate(items, **options)`` returning one result per item; None runs model.onnx once per batch.
        ``sessions``: model.onnx as "model" and each companion graph by name."""
        return None

    def is_single(self, item: Any) -> bool:
        """True when ``item`` is one input (predict then returns one result, not a list)."""
        raise NotImplementedError

    def input_suffixes(self) -> tuple[str, ...]:
        """File suffixes of inputs this task reads from disk; ``zoo predict`` expands a directory or glob
        into such files. Empty for tasks whose inputs are the arguments themselves (text)."""
        return ()

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """predict's keyword options, checked; unknown ones are an InputError naming the valid ones."""
        unknown = sorted(set(options) - set(self.predict_options))
        if unknown:
            valid = ", ".join(self.predict_options) or "none"
            raise InputError(f"predict option(s) {', '.join(unknown)} do not apply to {self.name}; valid: {valid}")
        return options

    def runtime_options(self, options: dict[str, Any], model: Any) -> dict[str, Any]:
        """predict's checked options, completed once per call with what the loaded ``model`` (an ExportedModel)
        computes from them (zero-shot: the labels' text embeddings)."""
        return options

    def embed(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], preprocessor: Any, kind: str,
              items: list[Any]) -> np.ndarray:
        """``embed_text`` / ``embed_images`` (``kind``: text | images) of an image-text model: one row per item."""
        raise InputError(f"embed_{kind} needs an image-text artifact (zero-shot-image-classification); this one is "
                         f"{self.name}: use predict")

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        """Graph outputs -> one typed result per input."""
        raise NotImplementedError

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        """Raw inputs like production traffic, for ``zoo bench``."""
        raise NotImplementedError

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        """A rich table of predictions for ``zoo predict``."""
        raise NotImplementedError

    def save_pictures(self, inputs: list[Any], results: list[Any], folder: Path) -> list[Path]:
        """Draw the predictions onto the inputs (``zoo predict --save``); return the files written."""
        from zoo.errors import ConfigError

        raise ConfigError(f"--save draws predictions on images; {self.name} models have nothing to draw: "
                          "leave --save out (use --json for machine-readable output)")

    # ------------------------------------------------------------ data

    def builtin_datasets(self) -> dict[str, Callable[[], tuple[Any, str]]]:
        """Offline data sets this task ships: ``builtin:NAME`` -> a loader of (DatasetDict, fingerprint)."""
        return {}

    def load_builtin(self, name: str) -> tuple[Any, str]:
        """(DatasetDict with a 'train' split, sha256 fingerprint) of ``builtin:NAME``, one of this task's sets."""
        own = self.builtin_datasets()
        if name not in own:
            valid = ", ".join(f"builtin:{b}" for b in sorted(own)) or "none (give a file, a folder or a hub data set)"
            raise DataError(f"unknown built-in data set 'builtin:{name}' for {self.name} models; valid: {valid}")
        return own[name]()

    def read_data(self, data: str) -> dict[str, Any] | None:
        """Splits of a data layout only this task reads (e.g. COCO ``instances.json``), else None."""
        return None

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """The spec adjusted for training (image size, a head task for a bare encoder ...)."""
        return spec

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        raise self._not_trainable()

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        """The fine-tuned model's labels (a ``zoo.data.labels.LabelPlan``): the model's own where the
        data's fit them (head kept), else the data's on a new head (always with ``new_head``)."""
        raise self._not_trainable()

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        raise self._not_trainable()

    def training_module(self, model: Any, spec: ModelSpec) -> Any:
        """What training calls with a batch's inputs (``training_loss``'s runner): by default the export module."""
        return self.export_module(model, spec)

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        """(summed loss over this rank's micro-batch, number of targets it covers)."""
        raise self._not_trainable()

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        """(summed validation loss, targets counted, per-row records for ``metrics``) of kept rows."""
        raise self._not_trainable()

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        """Validation metrics of every rank's records together (from a maintained library)."""
        raise self._not_trainable()

    def metric_problem(self, metric: str, data: Any) -> str | None:
        """Why ``metrics`` cannot report ``metric`` (one of ``metric_names``) on this training data, else None."""
        return None

    def _not_trainable(self) -> Exception:
        from zoo.errors import ConfigError

        # the list of trainable tasks is the registry's (zoo.tasks), which this interface does not import
        return ConfigError(f"zoo finetune does not train {self.name} models; give --task with a trainable task "
                           "(zoo finetune --help lists them) to put a head on this model")


def choose_column(names: list[str], given: str | None, usual: Any, kind: str, flag: str) -> str:
    """The column named by ``flag``, else the first usual name present; a clear DataError otherwise."""
    from zoo.errors import DataError

    if given is not None:
        if given not in names:
            raise DataError(f"{flag} {given}: no such column; the data has columns: {', '.join(names)}")
        return given
    for name in usual:
        if name in names:
            return name
    raise DataError(f"no {kind} column found among: {', '.join(names)}; name it with {flag} COLUMN")


def _pick(output: Any, name: str) -> Any:
    """One named output of a model's forward (a tensor, a ModelOutput or a dict)."""
    if not hasattr(output, "keys"):
        return output if not isinstance(output, (tuple, list)) else output[0]
    return output[name] if name in output.keys() else output[0]
