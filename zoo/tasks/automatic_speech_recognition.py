"""automatic-speech-recognition: the words spoken in a clip (wav2vec2 / HuBERT CTC heads).

    zoo export ./wav2vec2-base-960h --out artifacts/asr
    zoo predict artifacts/asr meeting.wav            # prints the transcript; --json for machine-readable output

Clips are read as audio-classification reads them (soundfile, mono, soxr to the
model's rate, features in numpy: ``_audio.py``), but not cut at the model's
window: a clip longer than ``chunk_seconds`` is cut into overlapping chunks as
transformers' ASR pipeline cuts it (``_asr_ctc.py``), every chunk one row of the
batch. The graph gives CTC logits per frame; numpy picks the best token per
frame, stitches the chunks back together and decodes the text with the
tokenizer's vocabulary, which travels in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError, ConfigError, InputError
from zoo.folders import read_json
from zoo.spec import ModelSpec, Preprocess, Tolerances
from zoo.tasks import _asr_ctc as ctc
from zoo.tasks import _asr_whisper_export as whisper
from zoo.tasks._audio import MAX_SECONDS, AudioSettings, AudioTask, _where
from zoo.tasks._audio_io import load_clip
from zoo.tasks._classify import TopOneAgreement
from zoo.tasks.base import Case, Companion, Task
from zoo.tasks.results import Transcription

# transformers' pipeline chunks only when asked; zoo must bound a graph call, so a clip longer than the model's
# 30 s window is chunked with the pipeline's default stride (a sixth of the chunk on each side)
STRIDE_SHARE = 1 / 6
DECODE_CHECK_ROWS = 64  # synthetic frame-id rows the decoding check adds to the grid's own


@dataclass(frozen=True)
class ChunkedBatch:
    """Graph arrays, one row per chunk, and how the chunks map back onto the clips."""

    arrays: dict[str, np.ndarray]
    durations: list[float]
    chunks: list[ctc.Chunk] = field(default_factory=list)


@dataclass(frozen=True)
class Chunking:
    """Window and context of long clips, in samples, aligned to logit frames (``frame`` samples each)."""

    chunk: int
    left: int
    right: int
    kernels: tuple[int, ...]  # the feature encoder's convolutions, which set how many frames a chunk makes
    strides: tuple[int, ...]

    @classmethod
    def from_record(cls, record: dict[str, Any], rate: int) -> Chunking:
        kernels, strides = tuple(record["conv_kernel"]), tuple(record["conv_stride"])
        frame = math.prod(strides)
        chunk = ctc.aligned(float(record["chunk_seconds"]), rate, frame)
        stride = ctc.aligned(float(record["stride_seconds"]), rate, frame)
        return cls(chunk, stride, stride, kernels, strides)


class AsrPreprocessor:
    """Clips -> one normalised waveform row per chunk (numpy only)."""

    def __init__(self, folder: Path, manifest: Any):
        record = manifest.preprocess
        problems = record_problems(record)
        if problems:
            raise ArtifactError(f"{folder}/manifest.json preprocess: {'; '.join(problems)}; re-export the model")
        self.settings = AudioSettings.from_record(record, manifest.input_names, ArtifactError,
                                                  f"{folder}/manifest.json preprocess")
        self.chunking = Chunking.from_record(record, self.settings.sampling_rate)

    @classmethod
    def from_record(cls, record: dict[str, Any], input_names: Sequence[str]) -> AsrPreprocessor:
        self = cls.__new__(cls)
        self.settings = AudioSettings.from_record(record, input_names)
        self.chunking = Chunking.from_record(record, self.settings.sampling_rate)
        return self

    def __call__(self, items: Sequence[Any]) -> ChunkedBatch:
        settings, plan = self.settings, self.chunking
        longest = int(MAX_SECONDS * settings.sampling_rate)
        rows, chunks, durations = [], [], []
        for index, item in enumerate(items):
            clip, seconds = load_clip(item, _where(item, index), settings.sampling_rate, longest,
                                      settings.min_samples)
            durations.append(seconds)
            for chunk in ctc.chunk_clip(index, len(clip), plan.chunk, plan.left, plan.right):
                # each chunk is normalised on its own, as the pipeline runs the feature extractor per chunk
                rows.append(settings.clip_features(clip[chunk.start:chunk.start + chunk.length]))
                chunks.append(chunk)
        return ChunkedBatch(settings.collate(rows), durations, chunks)


def record_problems(record: dict[str, Any]) -> list[str]:
    problems = ctc.vocab_problems(record.get("ctc"))
    for key in ("chunk_seconds", "stride_seconds"):
        value = record.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= MAX_SECONDS:
            problems.append(f"{key} is {value!r}, give a number from 0 to {MAX_SECONDS:g}")
    if not problems and not 0 <= 2 * record["stride_seconds"] < record["chunk_seconds"]:
        problems.append(f"stride_seconds {record['stride_seconds']} leaves nothing of chunk_seconds "
                        f"{record['chunk_seconds']}: each side's context must be under half the chunk")
    kernels, strides = record.get("conv_kernel"), record.get("conv_stride")
    if not (_small_ints(kernels) and _small_ints(strides) and len(kernels) == len(strides)):
        problems.append(f"conv_kernel {kernels!r} and conv_stride {strides!r} must be equally long lists of "
                        "positive integers (the feature encoder's convolutions)")
    return problems


def _small_ints(values: Any) -> bool:
    return (isinstance(values, list) and 0 < len(values) <= 32
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in values))


def conv_record(config: dict[str, Any]) -> dict[str, list[int]]:
    """The feature encoder's kernels and strides: they give the frames a chunk makes and the samples per frame
    (transformers' ``inputs_to_logits_ratio``); wav2vec2's defaults where a config leaves them out."""
    return {"conv_kernel": [int(k) for k in config.get("conv_kernel") or (10, 3, 3, 3, 3, 2, 2)],
            "conv_stride": [int(s) for s in config.get("conv_stride") or (5, 2, 2, 2, 2, 2, 2)]}


def ctc_decode_check(stage: Path, record: dict[str, Any], references: list[dict[str, np.ndarray]]) -> Check:
    """numpy decoding must give transformers' ``batch_decode`` text for the grid's argmax rows, and for random
    rows with runs, blanks and word delimiters (a random model rarely emits those)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(stage)
    vocab = ctc.CtcVocab.from_record(record["ctc"])
    rows = [row for ref in references for row in np.asarray(ref["logits"]).argmax(-1)]
    rng = np.random.default_rng(0)
    for _ in range(DECODE_CHECK_ROWS):
        ids = rng.integers(0, len(vocab.tokens), rng.integers(1, 30))
        ids = np.where(rng.random(ids.size) < 0.3, vocab.blank, ids)
        if vocab.delimiter is not None:
            ids = np.where(rng.random(ids.size) < 0.15, vocab.delimiter, ids)
        rows.append(np.repeat(ids, rng.integers(1, 4, ids.size)))
    expected = tokenizer.batch_decode([r.tolist() for r in rows])
    differ = [i for i, row in enumerate(rows) if vocab.decode(row) != expected[i]]
    detail = (f"row {differ[0]}: {vocab.decode(rows[differ[0]])!r} vs {expected[differ[0]]!r}" if differ
              else f"{len(references)} grid cases + {DECODE_CHECK_ROWS} random rows")
    return Check("numpy CTC decoding reproduces the tokenizer's batch_decode", bool(rows) and not differ,
                 f"{len(rows) - len(differ)}/{len(rows)} rows", "all rows", detail)


class AutomaticSpeechRecognition(AudioTask):
    name: ClassVar[str] = "automatic-speech-recognition"
    summary: ClassVar[str] = "the words spoken in an audio clip (CTC heads; Whisper: encoder + decoder graphs)"
    # among audio models, ForConditionalGeneration is Whisper (a text model's is text2text-generation's)
    hf_heads: ClassVar[tuple[str, ...]] = ("ForCTC", "ForConditionalGeneration")
    hf_auto_class: ClassVar[str | None] = "AutoModelForCTC"
    predict_options: ClassVar[dict[str, type]] = {"language": str, "task": str, "max_new_tokens": int,
                                                  "timestamps": bool}
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_wer"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_wer", "val_cer")

    def hf_model_class(self, spec: ModelSpec) -> str | None:
        return "AutoModelForSpeechSeq2Seq" if whisper.is_whisper(spec) else self.hf_auto_class

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        if config.get("model_type") == "whisper":
            inputs, preprocess = whisper.describe(config)
            return inputs, preprocess, None
        return super().describe_hf(folder, config, st)

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        if whisper.is_whisper(spec):
            import transformers

            return transformers.WhisperFeatureExtractor.from_pretrained(folder) if folder else \
                transformers.WhisperFeatureExtractor(feature_size=spec.preprocess.num_mel_bins or 80)
        return super().load_processor(spec, folder)

    def adapt_model(self, model: Any, spec: ModelSpec) -> Any:
        config = getattr(model, "config", None)
        if getattr(config, "layerdrop", 0.0):
            config.layerdrop = 0.0  # as audio-classification: every layer runs, in training and export alike
        if hasattr(model, "freeze_feature_encoder"):
            # a CTC head fine-tunes on its pretrained convolutions, frozen, as transformers' recipes train it;
            # export and verification run without gradients, so only training sees this
            model.freeze_feature_encoder()
        return model

    # ------------------------------------------------------------ export

    def export_module(self, model: Any, spec: ModelSpec) -> Any:
        if whisper.is_whisper(spec):
            from zoo.tasks._seq2seq_torch import decoder_module

            return decoder_module(model, whisper.layers(spec), masked=False)
        return super().export_module(model, spec)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return whisper.output_names(spec) if whisper.is_whisper(spec) else ("logits",)

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return whisper.output_axes(spec) if whisper.is_whisper(spec) else {"logits": ["batch", "frames", None]}

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        if whisper.is_whisper(spec):
            return {"encoder_sequence": whisper.FRAMES // 2, "decoder_sequence": 448, "past_sequence": 448}
        return super().axis_bounds(spec)

    def select_outputs(self, output: Any, spec: ModelSpec) -> Any:
        return output if whisper.is_whisper(spec) else super().select_outputs(output, spec)

    def graph_fusion(self, spec: ModelSpec) -> str | None:
        return None if whisper.is_whisper(spec) else super().graph_fusion(spec)

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        if whisper.is_whisper(spec):
            return whisper.decoder_grid(spec, whisper.vocab_size(spec), (0,))[2].inputs
        return super().export_example(spec, processor)

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        if whisper.is_whisper(spec):
            return whisper.decoder_grid(spec, whisper.vocab_size(spec), seeds)
        return super().grid(spec, processor, seeds)

    def companion_graphs(self, module: Any, spec: ModelSpec, processor: Any,
                         seeds: tuple[int, ...]) -> list[Companion]:
        if not whisper.is_whisper(spec):
            return []
        from zoo.tasks._seq2seq_torch import encoder_module

        cases = whisper.encoder_grid(processor, seeds)
        return [Companion("encoder", whisper.ENCODER_FILE, whisper.encoder_spec(spec),
                          encoder_module(module.model, ["input_features"]).eval(), cases, cases[-1].inputs)]

    def model_record(self, module: Any) -> dict[str, Any]:
        model = getattr(module, "model", None)
        if getattr(getattr(model, "config", None), "model_type", None) == "whisper":
            return {"generation": whisper.generation_record(model)}
        return {}

    def pipeline_checks(self, module: Any, spec: ModelSpec, sessions: dict[str, Any], companions: list[Companion],
                        tol: Tolerances, compare: Any) -> list[Check]:
        [encoder] = companions
        first = encoder.cases[0].seed
        # the batch of two clips of one seed: rows of different lengths; more cases add only time
        cases = [c for c in encoder.cases if c.seed == first and c.kind == "padded"]
        record = {"generation": whisper.generation_record(module.model),
                  **self._whisper_files(spec)}
        return whisper.pipeline_checks(module.model, record, sessions, cases, tol, compare)

    def _whisper_files(self, spec: ModelSpec) -> dict[str, Any]:
        folder = Path(spec.local_path or ".")
        generation = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() \
            else {}
        extractor = read_json(folder / "preprocessor_config.json")
        return {"whisper": whisper.whisper_record(read_json(folder / "config.json"), generation, extractor)}

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        import transformers

        if whisper.is_whisper(spec):
            return whisper.write_files(processor, stage, folder)
        if folder is None or not (folder / "vocab.json").is_file():
            raise ConfigError(f"{spec.name}: a CTC model needs its tokenizer's vocab.json beside config.json to "
                              "turn logits into text; give the folder saved with the model's processor "
                              "(processor.save_pretrained)")
        record = super().write_preprocessor(spec, processor, stage, folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        before = set(p.name for p in stage.iterdir())
        tokenizer.save_pretrained(stage)
        record["files"] = sorted(set(record["files"]) | ({p.name for p in stage.iterdir()} - before))
        window = AudioSettings.from_spec(spec).max_samples / spec.preprocess.sampling_rate
        record.update(ctc=ctc.CtcVocab.from_tokenizer(tokenizer).record(), chunk_seconds=window,
                      stride_seconds=window * STRIDE_SHARE, **conv_record(read_json(folder / "config.json")))
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        if record.get("features") == "whisper":  # the decoder's grid has no audio; the encoder's checks the log-mel
            return [whisper.feature_check(record, cases)] if "input_features" in cases[0].inputs else []
        return [*super().export_checks(stage, record, cases, references),
                ctc_decode_check(stage, record, references)]

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> Any:
        if whisper.is_whisper(spec) and whisper.is_encoder(spec):
            from zoo.tasks.feature_extraction import CosineAgreement

            return CosineAgreement("last_hidden_state", tol)
        if whisper.is_whisper(spec):
            from zoo.tasks._generate_verify import NextTokenAgreement

            return NextTokenAgreement(tol)
        return TopOneAgreement("logits", tol)  # the best token of every frame, padding frames included

    def memory_terms(self, spec: ModelSpec, dims: Any, case: Case) -> dict[str, int]:
        if whisper.is_whisper(spec):
            return Task.memory_terms(self, spec, dims, case)
        return super().memory_terms(spec, dims, case)

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        if whisper.is_whisper(spec):
            return Task.shrink_case(self, spec, processor, case)
        return super().shrink_case(spec, processor, case)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        if manifest.preprocess.get("features") == "whisper":
            return whisper_problems(folder, manifest)
        return super().preprocessor_problems(folder, manifest) + [
            f"speech recognition: {p}" for p in record_problems(manifest.preprocess)]

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        if manifest.preprocess.get("features") == "whisper":
            from zoo.tasks._asr_whisper import WhisperPreprocessor

            problems = whisper_problems(folder, manifest)
            if problems:
                raise ArtifactError(f"{folder}/manifest.json: {'; '.join(problems)}; re-export the model")
            return WhisperPreprocessor(folder, manifest.preprocess["whisper"])
        return AsrPreprocessor(folder, manifest)

    def generator(self, sessions: dict[str, Any], manifest: Any, preprocessor: Any) -> Any | None:
        if manifest.preprocess.get("features") != "whisper":
            return None  # CTC: model.onnx once per batch, then postprocess
        from zoo.tasks._asr_whisper import WhisperGenerator

        return WhisperGenerator(sessions, manifest, preprocessor)

    def runtime_options(self, options: dict[str, Any], model: Any) -> dict[str, Any]:
        if options and model.manifest.preprocess.get("features") != "whisper":
            raise InputError(f"{', '.join(sorted(options))}: a CTC model transcribes what it hears, in the "
                             "language it was trained on; these options are for Whisper models")
        return options

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        vocab = ctc.CtcVocab.from_record(manifest.preprocess["ctc"])
        record = manifest.preprocess
        ids = outputs["logits"].argmax(-1)
        clips = len(batch.durations)
        joined = ctc.stitch(ids, batch.chunks, clips, record["conv_kernel"], record["conv_stride"])
        counts = [sum(c.clip == i for c in batch.chunks) for i in range(clips)]
        return [Transcription(vocab.decode(row), seconds, count)
                for row, seconds, count in zip(joined, batch.durations, counts)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        table.add_column("input")
        table.add_column("seconds", justify="right")
        table.add_column("transcript")
        for item, result in zip(inputs, results):
            lines = [f"[{s.start:.2f} -> {s.end:.2f}] {s.text.strip()}" for s in result.segments]
            table.add_row(escape(item), f"{result.seconds:.2f}", escape("\n".join(lines) if lines else result.text))
        return table

    # ------------------------------------------------------------ training (zoo.tasks._asr_data, _asr_train)

    def read_data(self, data: str) -> dict[str, Any] | None:
        from zoo.tasks._asr_data import read_asr_data

        return read_asr_data(data)

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._asr_data import asr_columns

        return asr_columns(table, input_column, label_column)

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.data.labels import LabelPlan

        return LabelPlan((), new_head=False, source="model")  # the tokenizer's vocabulary is the head

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks import _asr_data

        if whisper.is_whisper(spec):
            return _asr_data.encode_whisper(table, columns, spec, processor, what)
        conv = conv_record(read_json(Path(spec.local_path or ".") / "config.json"))
        return _asr_data.encode_ctc(table, columns, spec, conv, what)

    def training_module(self, model: Any, spec: ModelSpec) -> Any:
        return model  # CTC: the loss from its logits; Whisper: its own forward, labels in

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        from zoo.tasks._asr_train import LENGTHS

        if whisper.is_whisper(spec):
            return {k: batch[k] for k in ("input_features", "labels")}
        return {**{i.name: batch[i.name] for i in spec.inputs}, "labels": batch["labels"], LENGTHS: batch[LENGTHS]}

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        if "input_features" in inputs:
            from zoo.tasks._seq2seq_train import training_loss

            return training_loss(runner, batch, inputs)
        from zoo.tasks._asr_train import ctc_training_loss

        return ctc_training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks import _asr_train

        if "input_features" in inputs:
            return _asr_train.whisper_eval_batch(runner, batch, inputs, rows)
        return _asr_train.ctc_eval_batch(runner, batch, inputs, rows)

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from zoo.tasks._asr_train import metrics

        return metrics(records)


def whisper_problems(folder: Path, manifest: Any) -> list[str]:
    record = manifest.preprocess
    problems = []
    if not isinstance(record.get("whisper"), dict) or not isinstance(record.get("generation"), dict):
        problems.append("preprocess.whisper and preprocess.generation (prompt tokens, decoder ids) are missing")
    elif not _is_bins(record["whisper"].get("num_mel_bins")):
        problems.append(f"whisper.num_mel_bins is {record['whisper'].get('num_mel_bins')!r}, give 80 or 128")
    if not (Path(folder) / "tokenizer.json").is_file():
        problems.append("tokenizer.json is missing")
    if "encoder" not in (record.get("graphs") or {}):
        problems.append(f"preprocess.graphs.encoder ({whisper.ENCODER_FILE}) is missing")
    return problems


def _is_bins(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 512


TASK = AutomaticSpeechRecognition()
