"""Whisper's export: the spec of its two graphs, their grids and the checks of both together.

The graphs are the encoder-decoder core's (``zoo.tasks._seq2seq_torch``): model.onnx is the decoder
(``masked=False``: Whisper's encoder output has no padding), encoder.onnx the companion taking
``input_features`` [batch, mel bins, 3000]. The decoder's grid runs on random caches and random
cross-attention tensors of Whisper's 1500 encoder positions; the encoder's on log-mel features of
synthetic clips made by transformers' ``WhisperFeatureExtractor``, which the runtime's numpy features
must reproduce. The checks of both graphs together run the runtime's own code (``_asr_whisper``):
decoder steps against transformers' cache, and greedy transcription token-identical to
``generate(language=..., task=...)`` for each task.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from zoo.checks import Check
from zoo.errors import ConfigError
from zoo.folders import read_json
from zoo.spec import InputSpec, ModelSpec, Preprocess, Tolerances
from zoo.tasks import _audio_features as feats
from zoo.tasks._audio import synthetic_clip
from zoo.tasks.base import Case

ENCODER_FILE = "encoder.onnx"
FRAMES = 3000  # 30 s of 10 ms frames: Whisper's encoder takes no other length
CLIP_SECONDS = {"short": [2.3], "padded": [4.1, 1.2]}
GREEDY_TOKENS = 24
PARITY_ATOL = 1e-4  # numpy log-mel vs WhisperFeatureExtractor (measured: ~3e-5, its torch.stft in float32)


def is_whisper(spec: ModelSpec) -> bool:
    return spec.preprocess.features == "whisper"


def is_encoder(spec: ModelSpec) -> bool:
    return spec.inputs[0].name == "input_features"


def layers(spec: ModelSpec) -> int:
    return sum(1 for i in spec.inputs if i.name.startswith("cross.") and i.name.endswith(".key"))


def describe(config: dict[str, Any]) -> tuple[tuple[InputSpec, ...], Preprocess]:
    from zoo.tasks.text2text_generation import seq2seq_layout

    layout = seq2seq_layout(config)
    own = ("batch", layout["heads"], "past_sequence", layout["head_dim"])
    cross = ("batch", layout["heads"], "encoder_sequence", layout["head_dim"])
    inputs = (InputSpec("decoder_input_ids", "int64", ("batch", "decoder_sequence")),)
    inputs += tuple(InputSpec(f"past_key_values.{i}.{kind}", "float32", own)
                    for i in range(layout["layers"]) for kind in ("key", "value"))
    inputs += tuple(InputSpec(f"cross.{i}.{kind}", "float32", cross)
                    for i in range(layout["layers"]) for kind in ("key", "value"))
    bins = int(config.get("num_mel_bins", 80))
    return inputs, Preprocess(features="whisper", sampling_rate=16000, num_mel_bins=bins, max_frames=FRAMES)


def encoder_spec(spec: ModelSpec) -> ModelSpec:
    """The companion's spec: the features in; ``labels`` carry the cross-attention names it gives out, as
    text2text-generation's encoder spec does."""
    cross = tuple(i.name for i in spec.inputs if i.name.startswith("cross."))
    bins = int(spec.preprocess.num_mel_bins or 80)
    return dataclasses.replace(spec, inputs=(InputSpec("input_features", "float32", ("batch", bins, FRAMES)),),
                               labels=cross)


def output_names(spec: ModelSpec) -> tuple[str, ...]:
    if is_encoder(spec):
        return ("last_hidden_state",) + tuple(spec.labels or ())
    return ("logits",) + tuple(f"present.{i}.{kind}" for i in range(layers(spec)) for kind in ("key", "value"))


def output_axes(spec: ModelSpec) -> dict[str, list[str | None]]:
    names = output_names(spec)
    if is_encoder(spec):
        axes: dict[str, list[str | None]] = {names[0]: ["batch", None, None]}
        axes.update({n: ["batch", None, None, None] for n in names[1:]})
        return axes
    axes = {"logits": ["batch", "decoder_sequence", None]}
    axes.update({n: ["batch", None, "total_sequence", None] for n in names[1:]})
    return axes


# ---------------------------------------------------------------- grids


def decoder_step(spec: ModelSpec, ids: np.ndarray, past: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Decoder inputs: new tokens ``ids`` after a random cache of ``past`` tokens, random cross tensors."""
    first = next(i for i in spec.inputs if i.name.startswith("cross."))
    heads, dim = int(first.shape[1]), int(first.shape[3])
    batch = len(ids)
    inputs = {"decoder_input_ids": ids.astype(np.int64)}
    for name in (i.name for i in spec.inputs[1:]):
        length = past if name.startswith("past_") else FRAMES // 2
        inputs[name] = rng.standard_normal((batch, heads, length, dim), np.float32)
    return inputs


def decoder_grid(spec: ModelSpec, vocab: int, seeds: tuple[int, ...]) -> list[Case]:
    cases = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for kind, batch, past, new in (("decode", 3, 3, 1), ("first step", 1, 0, 4), ("several tokens", 2, 2, 3)):
            ids = rng.integers(0, vocab, size=(batch, new))
            cases.append(Case(kind, seed, decoder_step(spec, ids, past, rng)))
    return cases


def encoder_grid(processor: Any, seeds: tuple[int, ...]) -> list[Case]:
    rate = int(processor.sampling_rate)
    cases = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for kind, seconds in CLIP_SECONDS.items():
            clips = [synthetic_clip(s + rng.uniform(0, 0.01), rate, rng) for s in seconds]
            values = processor(clips, sampling_rate=rate, return_tensors="np")["input_features"].astype(np.float32)
            cases.append(Case(kind, seed, {"input_features": values}, texts=[f"{len(c) / rate:.2f} s clip"
                                                                              for c in clips], raw=clips))
    return cases


def vocab_size(spec: ModelSpec) -> int:
    return int(read_json(Path(spec.local_path) / "config.json").get("vocab_size", 51865)) if spec.local_path else 51865


# ---------------------------------------------------------------- files and checks


def write_files(processor: Any, stage: Path, folder: Path | None) -> dict[str, Any]:
    import os

    import transformers

    if folder is None or not (folder / "preprocessor_config.json").is_file():
        raise ConfigError("a Whisper model needs its processor's files (preprocessor_config.json, tokenizer) beside "
                          "config.json; save them with processor.save_pretrained")
    before = set(os.listdir(stage))
    processor.save_pretrained(stage)
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(stage)
    generation = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    record = whisper_record(read_json(folder / "config.json"), generation,
                            read_json(folder / "preprocessor_config.json"))
    return {"features": "whisper", "sampling_rate": record["sampling_rate"], "num_mel_bins": record["num_mel_bins"],
            "max_frames": FRAMES, "whisper": record, "files": sorted(set(os.listdir(stage)) - before)}


def whisper_record(config: dict[str, Any], generation: dict[str, Any], extractor: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``whisper`` record: feature sizes and the prompt's special tokens (model files' JSON), and the
    language and task ``generate`` takes from generation_config.json when given none (fine-tuning writes them)."""
    languages = {str(k).strip("<|>"): int(v) for k, v in (generation.get("lang_to_id") or {}).items()}
    tasks = {k: int(v) for k, v in (generation.get("task_to_id") or {}).items()}
    task = generation.get("task")
    if task is not None and task not in tasks:
        raise ConfigError(f"generation_config.json names task {task!r}; this Whisper model knows: "
                          f"{', '.join(sorted(tasks)) or 'none'}; fix or remove it")
    return {"sampling_rate": int(extractor.get("sampling_rate", 16000)),
            "num_mel_bins": int(config.get("num_mel_bins", extractor.get("feature_size", 80))),
            "languages": languages, "tasks": tasks,
            "language": _language_code(generation.get("language"), languages), "task": task,
            "no_timestamps": generation.get("no_timestamps_token_id"),
            "forced_decoder_ids": [[int(i), None if t is None else int(t)]
                                   for i, t in generation.get("forced_decoder_ids") or []],
            "suppress_tokens": [int(t) for t in generation.get("suppress_tokens") or []],
            "begin_suppress_tokens": [int(t) for t in generation.get("begin_suppress_tokens") or []],
            "vocab_size": int(config.get("vocab_size", 51865)),
            "max_initial_timestamp_index": generation.get("max_initial_timestamp_index")}


def _language_code(given: Any, languages: dict[str, int]) -> str | None:
    """generation_config's ``language`` ("de", "<|de|>", "german") as the code the runtime's prompt takes, read as
    ``generate`` reads it; None where it names none."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    if given is None:
        return None
    name = str(given).lower()
    code = name.strip("<|>") if name.startswith("<|") else TO_LANGUAGE_CODE.get(name, name)
    if code not in languages:
        raise ConfigError(f"generation_config.json names language {given!r}; this Whisper model knows: "
                          f"{', '.join(sorted(languages)) or 'none (English-only)'}; fix or remove it")
    return code


def feature_check(record: dict[str, Any], cases: list[Case]) -> Check:
    """The runtime's numpy log-mel, from the manifest record, against the feature extractor's on the grid."""
    rate = int(record["sampling_rate"])
    filters = feats.whisper_mel_filters(int(record["num_mel_bins"]), rate)
    worst = 0.0
    for case in cases:
        got = np.stack([feats.whisper_features(clip, rate, filters) for clip in case.raw])
        worst = max(worst, float(np.abs(got - case.inputs["input_features"]).max()))
    return Check("numpy log-mel reproduces WhisperFeatureExtractor", bool(cases) and worst <= PARITY_ATOL,
                 f"max abs {worst:.3g}", f"<= {PARITY_ATOL:g}", f"{len(cases)} cases")


def generation_record(model: Any) -> dict[str, Any]:
    from zoo.tasks.text2text_generation import generation_record as seq2seq_record

    return {**seq2seq_record(model), "max_target_positions": int(model.config.max_target_positions)}


def pipeline_checks(model: Any, record: dict[str, Any], sessions: dict[str, Any], cases: list[Case],
                    tol: Tolerances, compare: Any) -> list[Check]:
    from zoo.tasks._seq2seq_decode import EncoderDecoder
    from zoo.tasks._seq2seq_verify import decode_steps

    core = EncoderDecoder(sessions["encoder"], sessions["model"], record["generation"])
    return [decode_steps(model, core, cases, tol, compare), greedy_check(model, record, sessions, cases)]


def greedy_check(model: Any, record: dict[str, Any], sessions: dict[str, Any], cases: list[Case]) -> Check:
    """The runtime's transcription tokens against ``generate``, per case, for each task (and detected language),
    and with timestamps where the model has them."""
    from zoo.tasks._asr_whisper import WhisperGenerator
    from zoo.tasks._seq2seq_decode import EncoderDecoder

    generator = WhisperGenerator.__new__(WhisperGenerator)  # no tokenizer: tokens are compared, not text
    generator.core = EncoderDecoder(sessions["encoder"], sessions["model"], record["generation"])
    generator.record = record["whisper"]
    languages = sorted(generator.record["languages"])
    # the model's own prompt (language detected), then each task with a named language; with timestamp tokens,
    # the model's own prompt again with timestamps
    settings = [(None, None, False)] + [(languages[i % len(languages)] if languages else None, task, False)
                                        for i, task in enumerate(sorted(generator.record["tasks"], reverse=True))]
    if has_timestamps(generator.record):
        settings.append((None, None, True))
    differ, compared = [], 0
    for case in cases:
        for language, task, timestamps in settings:
            features = case.inputs["input_features"]
            want = reference_tokens(model, features, GREEDY_TOKENS, language=language, task=task,
                                    timestamps=timestamps)
            got = generator.tokens(features, language, task, GREEDY_TOKENS, timestamps)
            for row, tokens in enumerate(got):
                compared += 1
                expected = _until_eos(want[row], generator.core.eos)
                if not np.array_equal(expected, tokens):
                    differ.append(f"{case.label} {language or 'detected'}/{task or 'transcribe'}"
                                  f"{' timestamps' if timestamps else ''} row {row}: "
                                  f"{expected.tolist()[:6]}... vs {tokens.tolist()[:6]}...")
    return Check("greedy transcription vs transformers", not differ and compared > 0,
                 f"{compared - len(differ)}/{compared} identical",
                 f"{GREEDY_TOKENS} tokens, generate(language, task, return_timestamps)", "; ".join(differ[:2]))


def has_timestamps(record: dict[str, Any]) -> bool:
    """Whether the vocabulary goes past ``<|notimestamps|>`` (the timestamp tokens follow it)."""
    stop = record.get("no_timestamps")
    return stop is not None and int(record.get("vocab_size", 0)) > int(stop) + 1


def reference_tokens(model: Any, features: np.ndarray, max_new_tokens: int, *, language: str | None = None,
                     task: str | None = None, timestamps: bool = False) -> np.ndarray:
    """transformers' greedy tokens after the prompt, [batch, n], from one decoding of the window
    (``force_unique_generate_call``): where the output holds timestamp tokens (asked for, or a random model's
    without them), ``generate`` would decode again from the last timestamp pair, which zoo, decoding each 30 s
    window once, does not."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.from_numpy(features), language=language, task=task, return_timestamps=timestamps,
                             force_unique_generate_call=True, max_new_tokens=max_new_tokens,
                             return_dict_in_generate=True, output_scores=True)
    # the sequences hold the prompt: cut where the generated tokens begin
    return out.sequences[:, -len(out.scores):].numpy()


def _until_eos(row: np.ndarray, eos: np.ndarray) -> np.ndarray:
    ends = np.nonzero(np.isin(row, eos))[0]
    return row[:ends[0] + 1] if len(ends) else row
