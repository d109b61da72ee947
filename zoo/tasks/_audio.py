"""What every audio task shares: waveform inputs, feature settings, the audio grid, the torch-free preprocessor.

A model's audio settings (``AudioSettings``) come from its feature extractor's
``preprocessor_config.json`` (or a registry entry's ``preprocess``) and travel in
the artifact's manifest; the runtime rebuilds the features from them with numpy
(``_audio_features``) after reading clips with soundfile and soxr (``_audio_io``).

Export traces batch 2 (one second, one padded row); the grid checks, per seed, a
short clip (batch 1), a padded batch of three clips of odd lengths and a batch
whose longest clip reaches the model's limit (truncated as the model's feature
extractor truncates), every case made from synthetic sounds by transformers' own
feature extractor. An export check then shows that the runtime's numpy features
reproduce that feature extractor on the same clips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError, ConfigError, UnsupportedTaskError
from zoo.folders import read_json
from zoo.spec import InputSpec, ModelSpec, Preprocess
from zoo.tasks import _audio_features as feats
from zoo.tasks._audio_io import MAX_RATE, MIN_RATE, load_clip
from zoo.tasks._memory import CONV_COPIES, ModelDims, conv_lengths, input_terms, transformer_terms
from zoo.tasks.base import Case, Task

FEATURES = ("waveform", "fbank")
DEFAULT_MAX_SECONDS = 30.0  # waveform models: wav2vec2's feature extractor sets no limit; attention is quadratic
# ASTFeatureExtractor's defaults (AudioSet statistics), used where a config leaves them out
AST_MEAN, AST_STD = -4.2677393, 4.5689974
FEATURE_EXTRACTORS = {"waveform": "Wav2Vec2FeatureExtractor", "fbank": "ASTFeatureExtractor"}
AUDIO_KEYS = ("features", "sampling_rate", "do_normalize", "num_mel_bins", "max_frames", "mean", "std",
              "max_seconds")
EXPORT_SECONDS = (1.0, 0.75)  # the trace batch: one full row, one padded
# A manifest is untrusted input: its numbers size the buffers the runtime allocates per clip.
MAX_SECONDS = 3600.0  # waveform window
MAX_FRAMES = 100_000  # fbank frames (AST uses 1024: 10.24 s)
MAX_MEL_BINS = 1024
PARITY_ATOL = 1e-4  # runtime features vs transformers' feature extractor (measured: ~2e-7)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class AudioSettings:
    """How clips become graph inputs: which features, at which rate, how long at most."""

    features: str
    sampling_rate: int
    do_normalize: bool
    attention_mask: bool  # the graph takes an attention_mask beside input_values
    num_mel_bins: int | None = None
    max_frames: int | None = None
    mean: float | None = None
    std: float | None = None
    max_seconds: float | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], input_names: Sequence[str], error: type = ConfigError,
                    where: str = "preprocess") -> AudioSettings:
        """Read and check a preprocess record (a manifest's, or a spec's as a dict); every problem at once."""
        problems = _record_problems(record, list(input_names))
        if problems:
            raise error(f"{where}: " + "; ".join(problems) + "; re-export the model, or fix its registry entry")
        return cls(features=record["features"], sampling_rate=int(record["sampling_rate"]),
                   do_normalize=bool(record.get("do_normalize")), attention_mask="attention_mask" in input_names,
                   num_mel_bins=record.get("num_mel_bins"), max_frames=record.get("max_frames"),
                   mean=_first(record.get("mean")), std=_first(record.get("std")), max_seconds=record.get("max_seconds"))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> AudioSettings:
        import dataclasses

        return cls.from_record(dataclasses.asdict(spec.preprocess), [i.name for i in spec.inputs],
                               where=f"{spec.name}: preprocess")

    # ------------------------------------------------------------ lengths

    @property
    def max_samples(self) -> int:
        """Samples a clip keeps: longer ones are truncated (the fbank uses no more than its frames)."""
        if self.features == "fbank":
            return feats.fbank_samples(self.sampling_rate, int(self.max_frames or 0))
        return int(round((self.max_seconds or DEFAULT_MAX_SECONDS) * self.sampling_rate))

    @property
    def min_samples(self) -> int:
        return feats.frame_length(self.sampling_rate)

    # ------------------------------------------------------------ features

    def clip_features(self, clip: np.ndarray) -> np.ndarray:
        """One clip's features: a normalised waveform [samples], or filterbank frames [frames, mel bins]."""
        clip = clip[:self.max_samples]
        if self.features == "fbank":
            normalise = self.do_normalize
            return feats.ast_features(clip, self.sampling_rate, int(self.num_mel_bins or 0),
                                      int(self.max_frames or 0), self.mean if normalise else None,
                                      self.std if normalise else None)
        return feats.normalize_waveform(clip) if self.do_normalize else clip.astype(np.float32)

    def collate(self, features: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per-clip features to graph inputs: filterbanks stacked, waveforms padded to the longest."""
        if self.features == "fbank":
            return {"input_values": np.stack(features).astype(np.float32)}
        values, mask = feats.pad_waveforms(features)
        return {"input_values": values, "attention_mask": mask} if self.attention_mask else {"input_values": values}

    def record(self) -> dict[str, Any]:
        """The manifest's preprocess record (one-value mean/std as lists, like the spec's)."""
        values = {"features": self.features, "sampling_rate": self.sampling_rate, "do_normalize": self.do_normalize,
                  "num_mel_bins": self.num_mel_bins, "max_frames": self.max_frames,
                  "mean": [self.mean] if self.mean is not None else None,
                  "std": [self.std] if self.std is not None else None,
                  "max_seconds": self.max_seconds if self.features == "waveform" else None}
        return {k: v for k, v in values.items() if v is not None}

    def load(self, item: Any, where: str) -> tuple[np.ndarray, float]:
        """One clip read, mixed to mono, resampled and truncated (InputError on bad input)."""
        return load_clip(item, where, self.sampling_rate, self.max_samples, self.min_samples)


def _record_problems(record: dict[str, Any], input_names: list[str]) -> list[str]:
    problems = []
    kind = record.get("features")
    if kind not in FEATURES:
        problems.append(f"features is {kind!r}, valid: {', '.join(FEATURES)}")
    rate = record.get("sampling_rate")
    if not _is_int(rate, MIN_RATE, MAX_RATE):
        problems.append(f"sampling_rate is {rate!r}, give the model's rate in Hz ({MIN_RATE} to {MAX_RATE}, "
                        "e.g. 16000)")
    if kind == "fbank":
        for key, most in (("num_mel_bins", MAX_MEL_BINS), ("max_frames", MAX_FRAMES)):
            value = record.get(key)
            if not _is_int(value, 1, most):
                problems.append(f"{key} is {value!r}, an fbank model needs an integer from 1 to {most}")
        if record.get("do_normalize") and not (_one_number(record.get("mean")) and _one_number(record.get("std"))):
            problems.append("do_normalize needs mean and std (one value each) for an fbank model")
    seconds = record.get("max_seconds")
    if kind == "waveform" and seconds is not None and not (_is_number(seconds) and 0 < seconds <= MAX_SECONDS):
        problems.append(f"max_seconds is {seconds!r}, give a number of seconds in (0, {MAX_SECONDS:g}]")
    if "input_values" not in input_names:
        problems.append(f"inputs are {input_names}; an audio model takes input_values (and maybe attention_mask)")
    return problems


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first(value: Any) -> float | None:
    """AST's statistics are one value each, kept as one-value lists like an image's per-channel ones."""
    return float(value[0]) if value else None


def _one_number(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 1 and _is_number(value[0])


# ---------------------------------------------------------------- describing a transformers folder


def hf_audio_settings(folder: Path, config: dict[str, Any]) -> tuple[Preprocess, tuple[InputSpec, ...]]:
    """Audio preprocessing and inputs of a save_pretrained folder, from its feature extractor's JSON."""
    pp = read_json(folder / "preprocessor_config.json")
    kind = pp.get("feature_extractor_type")
    rate = int(pp.get("sampling_rate", 16000))
    if config.get("model_type") == "audio-spectrogram-transformer":
        # the model's position embeddings fix the input size; its config is the authority
        frames, bins = int(config.get("max_length", 1024)), int(config.get("num_mel_bins", 128))
        preprocess = Preprocess(features="fbank", sampling_rate=rate, do_normalize=bool(pp.get("do_normalize", True)),
                                num_mel_bins=bins, max_frames=frames, mean=(float(pp.get("mean", AST_MEAN)),),
                                std=(float(pp.get("std", AST_STD)),))
        return preprocess, (InputSpec("input_values", "float32", ("batch", frames, bins)),)
    if kind not in (None, FEATURE_EXTRACTORS["waveform"]):
        raise UnsupportedTaskError(f"feature extractor {kind} ({config.get('model_type')}): zoo computes the "
                                   "inputs of wav2vec2-style waveform models (Wav2Vec2FeatureExtractor) and of the "
                                   "Audio Spectrogram Transformer (ASTFeatureExtractor) only")
    # wav2vec2 models with layer-normalised convolutions were trained with an attention mask
    mask = bool(pp.get("return_attention_mask", config.get("feat_extract_norm") == "layer"))
    preprocess = Preprocess(features="waveform", sampling_rate=rate, do_normalize=bool(pp.get("do_normalize", True)),
                            max_seconds=DEFAULT_MAX_SECONDS)
    return preprocess, waveform_inputs(mask)


def waveform_inputs(attention_mask: bool) -> tuple[InputSpec, ...]:
    values = InputSpec("input_values", "float32", ("batch", "samples"))
    return (values, InputSpec("attention_mask", "int64", ("batch", "samples"))) if attention_mask else (values,)


def feature_extractor(settings: AudioSettings) -> Any:
    """transformers' own feature extractor configured like ``settings`` (export checks, training files)."""
    import transformers

    if settings.features == "fbank":
        return transformers.ASTFeatureExtractor(
            sampling_rate=settings.sampling_rate, num_mel_bins=settings.num_mel_bins, max_length=settings.max_frames,
            do_normalize=settings.do_normalize, mean=settings.mean if settings.mean is not None else AST_MEAN,
            std=settings.std if settings.std is not None else AST_STD)
    return transformers.Wav2Vec2FeatureExtractor(sampling_rate=settings.sampling_rate,
                                                 do_normalize=settings.do_normalize,
                                                 return_attention_mask=settings.attention_mask)


def reference_features(processor: Any, settings: AudioSettings, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Graph inputs for ``clips`` made by transformers' feature extractor (truncated as the runtime truncates).

    A waveform model's clips go through it one at a time, then are zero-padded:
    the extractor normalises a padded batch without a mask over its padding too,
    which would make a clip's input depend on its neighbours.
    """
    clips = [c[:settings.max_samples] for c in clips]
    rate = settings.sampling_rate
    if settings.features == "fbank":
        return {"input_values": np.asarray(processor(clips, sampling_rate=rate, return_tensors="np")["input_values"],
                                           dtype=np.float32)}
    rows = [np.asarray(processor(c, sampling_rate=rate, return_tensors="np")["input_values"][0], dtype=np.float32)
            for c in clips]
    return settings.collate(rows)


# ---------------------------------------------------------------- synthetic clips for export and bench


def synthetic_clip(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A few harmonics with a vibrato, over faint noise: a sound with speech-like structure."""
    t = np.arange(max(1, int(round(seconds * rate)))) / rate
    pitch = rng.uniform(110, 440)
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    phase = 2 * np.pi * np.cumsum(pitch * vibrato) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * np.minimum(t / max(t[-1], 1e-9), 1.0)))
    clip = 0.3 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    return clip.astype(np.float32)


def _case_seconds(settings: AudioSettings, seed: int) -> list[tuple[str, list[float]]]:
    limit = settings.max_samples / settings.sampling_rate
    rng = np.random.default_rng(1000 + seed)
    odd = rng.uniform(0.0, 0.01, 3)  # odd sample counts, never round numbers
    return [("short", [0.5 + odd[0]]),
            ("padded", [1.0 + odd[0], 0.3 + odd[1], 2.2 + odd[2]]),
            # the longest clip runs past the limit and is truncated, the other is padded
            ("long", [limit + 0.5, min(3.0, limit / 2) + odd[1]])]


# ---------------------------------------------------------------- the runtime's preprocessor


@dataclass(frozen=True)
class AudioBatch:
    """Graph arrays for a batch of clips, and each clip's duration as read (before truncation)."""

    arrays: dict[str, np.ndarray]
    durations: list[float]
    window: float = 0.0  # seconds of each clip the model hears; the rest of a longer clip is cut off


class AudioPreprocessor:
    """Clips (paths, arrays, dicts) -> graph arrays with the artifact's audio settings; numpy only."""

    def __init__(self, folder: Path, manifest: Any):
        self.settings = AudioSettings.from_record(manifest.preprocess, manifest.input_names, ArtifactError,
                                                  f"{folder}/manifest.json preprocess")

    @classmethod
    def from_settings(cls, settings: AudioSettings) -> AudioPreprocessor:
        self = cls.__new__(cls)
        self.settings = settings
        return self

    def __call__(self, items: Sequence[Any]) -> AudioBatch:
        loaded = [self.settings.load(item, _where(item, i)) for i, item in enumerate(items)]
        arrays = self.settings.collate([self.settings.clip_features(clip) for clip, _ in loaded])
        window = self.settings.max_samples / self.settings.sampling_rate
        return AudioBatch(arrays=arrays, durations=[seconds for _, seconds in loaded], window=window)


def _where(item: Any, index: int) -> str:
    return f"input {index} ('{item}')" if isinstance(item, (str, Path)) else f"input {index}"


# ---------------------------------------------------------------- the mixin


class AudioTask(Task):
    modality: ClassVar[str] = "audio"
    expects: ClassVar[str] = "audio file paths, 1-D float arrays at the model's rate, or {'array', 'sampling_rate'}"

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        preprocess, inputs = hf_audio_settings(folder, config)
        return inputs, preprocess, self.labels_from_config(config)

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        return feature_extractor(AudioSettings.from_spec(spec))

    # ------------------------------------------------------------ runtime

    def input_suffixes(self) -> tuple[str, ...]:
        """What ``zoo predict`` picks from a directory or glob: the common containers soundfile reads."""
        return (".aif", ".aiff", ".flac", ".mp3", ".ogg", ".opus", ".wav")

    # ------------------------------------------------------------ export

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        return {"samples": AudioSettings.from_spec(spec).max_samples}

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        settings = AudioSettings.from_spec(spec)
        rng = np.random.default_rng(1234)
        clips = [synthetic_clip(s, settings.sampling_rate, rng) for s in EXPORT_SECONDS]
        return reference_features(processor, settings, clips)

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        settings = AudioSettings.from_spec(spec)
        cases = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            for kind, seconds in _case_seconds(settings, seed):
                clips = [synthetic_clip(s, settings.sampling_rate, rng) for s in seconds]
                cases.append(Case(kind, seed, reference_features(processor, settings, clips), raw=clips))
        return cases

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        import os

        before = set(os.listdir(stage))
        processor.save_pretrained(stage)  # preprocessor_config.json, for tools that read it
        record = AudioSettings.from_spec(spec).record()
        record["files"] = sorted(set(os.listdir(stage)) - before)
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        return [feature_parity_check(record, cases)]

    # ------------------------------------------------------------ verify

    def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
        """A waveform's frames after the feature encoder's strides, or a filterbank's patches, attended to."""
        values = case.inputs["input_values"]
        batch = int(values.shape[0])
        if values.ndim == 3:  # fbank [batch, frames, mel bins]
            return {**input_terms(case.inputs),
                    **transformer_terms(dims, batch, spectrogram_patches(dims, *values.shape[1:]))}
        lengths = conv_lengths(int(values.shape[1]), dims.setting("conv_kernel", ()), dims.setting("conv_stride", ()))
        channels = dims.setting("conv_dim", ())
        widest = max((c * n for c, n in zip(channels, lengths)), default=0)
        # without a conv stack in the config, every sample counts as a frame: the estimate errs high
        frames = lengths[-1] if lengths else int(values.shape[1])
        return {**input_terms(case.inputs), "feature encoder": batch * widest * dims.itemsize * CONV_COPIES,
                **transformer_terms(dims, batch, frames)}

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        """Shorter clips (3/4 of the longest, down to the export's 1 s; waveforms only: a filterbank is always
        ``max_frames`` long), then half the batch; features made again by the feature extractor."""
        settings = AudioSettings.from_spec(spec)
        clips = [clip[:settings.max_samples] for clip in case.raw]
        longest = max(len(clip) for clip in clips)
        floor = int(EXPORT_SECONDS[0] * settings.sampling_rate)
        if settings.features == "waveform" and longest > floor:
            keep = max(floor, longest * 3 // 4)
            clips = [clip[:keep] for clip in clips]
        elif len(clips) > 1:
            clips = clips[:(len(clips) + 1) // 2]
        else:
            return None
        return Case(case.kind, case.seed, reference_features(processor, settings, clips), raw=clips)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        problems = _record_problems(manifest.preprocess, manifest.input_names)
        return [f"audio preprocess: {p}" for p in problems]

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> AudioPreprocessor:
        return AudioPreprocessor(folder, manifest)

    def is_single(self, item: Any) -> bool:
        return isinstance(item, (str, Path, dict)) or (isinstance(item, np.ndarray) and item.ndim == 1)

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        # 1-D arrays are taken at the model's rate; 16 kHz is what wav2vec2 and AST models use
        return [synthetic_clip(2.0, 16000, rng) for _ in range(batch_size)]

    # ------------------------------------------------------------ training

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        return {i.name: batch[i.name] for i in spec.inputs}


def spectrogram_patches(dims: ModelDims, frames: int, bins: int) -> int:
    """The Audio Spectrogram Transformer's tokens: overlapping patches over time and frequency, plus two."""
    patch = int(dims.setting("patch_size", 16))
    along_time = (frames - patch) // int(dims.setting("time_stride", 10)) + 1
    along_frequency = (bins - patch) // int(dims.setting("frequency_stride", 10)) + 1
    return max(1, along_time) * max(1, along_frequency) + 2


def feature_parity_check(record: dict[str, Any], cases: list[Case]) -> Check:
    """The runtime's numpy features, from the manifest record, must reproduce the feature extractor's inputs."""
    names = list(cases[0].inputs) if cases else []
    preprocessor = AudioPreprocessor.from_settings(AudioSettings.from_record(record, names))
    worst, mismatched = 0.0, []
    for case in cases:
        got = preprocessor(case.raw).arrays
        for name, expected in case.inputs.items():
            if got[name].shape != expected.shape:
                mismatched.append(f"{case.label} {name} shape {list(got[name].shape)}")
                continue
            diff = float(np.max(np.abs(got[name].astype(np.float64) - expected))) if expected.size else 0.0
            worst = max(worst, diff)
            if not diff <= PARITY_ATOL:
                mismatched.append(f"{case.label} {name} differs by {diff:.3g}")
    kind = FEATURE_EXTRACTORS.get(str(record.get("features")), "the feature extractor")
    return Check(f"numpy features reproduce {kind}", bool(cases) and not mismatched, f"max abs {worst:.3g}",
                 f"<= {PARITY_ATOL:g}", "; ".join(mismatched[:3]) or f"{len(cases)} cases")
