"""Whisper in the torch-free runtime: log-mel features, the decoder prompt, greedy decoding, the text.

Two graphs, as every encoder-decoder artifact (``zoo.tasks._seq2seq_torch``): ``encoder.onnx`` takes
``input_features`` [batch, mel bins, 3000] (``_audio_features.whisper_features``: each clip padded to
30 s; a longer clip is cut into overlapping 30 s windows whose transcripts, or segments, ``_whisper_long``
joins) and gives the cross-attention keys and values; ``model.onnx`` is the decoder with its self-attention
cache. ``zoo.tasks._seq2seq_decode`` runs them.

The decoder prompt is transformers' ``WhisperForConditionalGeneration.generate``'s:
``<|startoftranscript|>``, the language token (given, else the one generation_config.json names, else detected:
the likeliest language token after the start token, as ``generate`` detects it), ``<|transcribe|>`` or
``<|translate|>`` (given, else generation_config.json's), and
``<|notimestamps|>`` (left out when timestamps are asked for: then the timestamp rules of
``_whisper_timestamps`` apply and the result has segments). The generated tokens go through the model's
``suppress_tokens`` at every step and its ``begin_suppress_tokens`` at the first, as there; the text is the
tokenizer's decoding with special tokens and timestamps skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ArtifactError, InputError
from zoo.tasks import _audio_features as feats
from zoo.tasks import _whisper_long as long
from zoo.tasks._audio_io import load_clip

TASKS = ("transcribe", "translate")
MIN_SAMPLES = feats.WHISPER_N_FFT  # one analysis window
WINDOWS_PER_RUN = 8  # 30 s windows through the encoder and decoder together


@dataclass(frozen=True)
class WhisperBatch:
    """``input_features`` [windows, mel bins, 3000], the clip each window belongs to, each clip's duration."""

    arrays: dict[str, np.ndarray]
    durations: list[float]
    owners: list[int]  # per row: the clip it was cut from (a clip past 30 s has several windows)
    places: list[long.Window]  # per row: where in its clip the window lies


class WhisperPreprocessor:
    """Clips -> ``input_features`` (numpy only): one row per clip, or per 30 s window of a longer clip, cut as
    transformers' pipeline cuts it with ``chunk_length_s=30`` (``_whisper_long``)."""

    def __init__(self, folder: Path, record: dict[str, Any]):
        from zoo.tasks._audio import MAX_SECONDS

        self.folder, self.record = Path(folder), record
        self.rate = int(record["sampling_rate"])
        self.filters = feats.whisper_mel_filters(int(record["num_mel_bins"]), self.rate)
        self.limit = int(MAX_SECONDS * self.rate)
        self.window = int(long.WINDOW_SECONDS * self.rate)
        self.stride = int(round(long.WINDOW_SECONDS * long.STRIDE_SHARE * self.rate))

    def __call__(self, items: Sequence[Any]) -> WhisperBatch:
        from zoo.tasks._asr_ctc import Chunk, chunk_clip
        from zoo.tasks._audio import _where

        rows, owners, durations, places = [], [], [], []
        for index, item in enumerate(items):
            clip, seconds = load_clip(item, _where(item, index), self.rate, self.limit, MIN_SAMPLES)
            durations.append(seconds)
            windows = chunk_clip(index, len(clip), self.window, self.stride, self.stride) \
                if len(clip) > self.window else [Chunk(index, 0, len(clip), 0, 0)]
            for chunk in windows:
                piece = clip[chunk.start:chunk.start + chunk.length]
                rows.append(feats.whisper_features(piece, self.rate, self.filters))
                owners.append(index)
                places.append(long.Window(*(n / self.rate for n in (chunk.start, chunk.length, chunk.left,
                                                                     chunk.right))))
        return WhisperBatch({"input_features": np.stack(rows)}, durations, owners, places)


class WhisperGenerator:
    """Clips in, transcripts out: the two graphs through ``EncoderDecoder``, the text through tokenizer.json."""

    def __init__(self, sessions: dict[str, Any], manifest: Any, preprocessor: WhisperPreprocessor):
        from tokenizers import Tokenizer

        from zoo.tasks._seq2seq_decode import EncoderDecoder

        generation = manifest.preprocess.get("generation")
        if not isinstance(generation, dict) or "encoder" not in sessions:
            raise ArtifactError(f"{manifest.name}: a Whisper artifact needs encoder.onnx and preprocess.generation; "
                                "re-export it with this zoo")
        self.core = EncoderDecoder(sessions["encoder"], sessions["model"], generation)
        self.record, self.preprocessor = manifest.preprocess["whisper"], preprocessor
        self.tokenizer = Tokenizer.from_file(str(preprocessor.folder / "tokenizer.json"))

    def prompt(self, language: str | None, task: str | None, encoded: Any) -> np.ndarray:
        """[batch, n] decoder prompt, built as ``generate`` builds it (``_retrieve_init_tokens``): the start token;
        with neither language nor task, the model's ``forced_decoder_ids``; the language (given, else detected
        where the model has language tokens); the task (given; with a language and no task, transcribe); then
        ``<|notimestamps|>`` (``timed`` takes it off again for timestamps, as ``generate`` does)."""
        record = self.record
        languages, tasks = record["languages"], record["tasks"]
        # what fine-tuning wrote into generation_config.json stands where nothing is given, as in ``generate``
        language = language if language is not None else record.get("language")
        task = task if task is not None else record.get("task")
        if task is not None and task not in TASKS:
            raise InputError(f"task {task!r}: valid: {', '.join(TASKS)}")
        if task is not None and task not in tasks:
            raise InputError(f"task {task!r}: this Whisper model is English-only and only transcribes; leave "
                             "--task out")
        code = None if language is None else language.strip("<|>").lower()
        if code is not None and code not in languages:
            valid = ", ".join(sorted(languages)) or "none (an English-only model: leave --language out)"
            raise InputError(f"language {language!r} is not one this model knows; valid: {valid}")
        head: list[int | None] = [self.core.start]
        if task is None and code is None:
            for _, token in sorted(record.get("forced_decoder_ids") or []):
                head.append(token)
        batch = len(encoded.cross[0])
        rows = [list(head) for _ in range(batch)]
        if code is not None:
            ids = [languages[code]] * batch
        elif languages and (len(head) <= 1 or head[1] is None):
            ids = self.detect(encoded)
        else:
            ids = []
        for row, lang in zip(rows, ids):
            if len(row) > 1:
                row[1] = lang
            else:
                row.append(lang)
        for row in rows:
            if task is not None:
                if any(t in row for t in tasks.values()):
                    row[:] = [tasks[task] if t in tasks.values() else t for t in row]
                else:
                    row.append(tasks[task])
            elif code is not None and tasks and not any(t in row for t in tasks.values()):
                row.append(tasks["transcribe"])
            stop = record.get("no_timestamps")
            if stop is not None and row[-1] != stop:
                row.append(int(stop))
        return np.array([[t for t in row if t is not None] for row in rows], np.int64)

    def timed(self, prompt: np.ndarray, timestamps: bool) -> np.ndarray:
        """The prompt without its closing ``<|notimestamps|>`` where timestamps are asked for."""
        stop = self.record.get("no_timestamps")
        return prompt[:, :-1] if timestamps and stop is not None and prompt[0, -1] == int(stop) else prompt

    def detect(self, encoded: Any) -> list[int]:
        """Per row, the likeliest language token after the start token (``generate``'s language detection)."""
        codes = np.array(sorted(self.record["languages"].values()), np.int64)
        binding = self.core.decoder.io_binding()
        held = self.core.bind(binding, encoded)
        start = np.full((len(encoded.cross[0]), 1), self.core.start, np.int64)
        logits, _ = self.core.step(binding, start, self.core.empty(len(start)))
        del held
        return [int(codes[i]) for i in logits[:, codes].argmax(-1)]

    def decoding(self, max_new_tokens: int | None, prompt_length: int, timestamps: bool = False) -> Any:
        from zoo.tasks._seq2seq_decode import record_decoding

        record = self.core.record
        longest = int(record.get("max_target_positions") or 448) - prompt_length
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or not 1 <= max_new_tokens <= longest):
            raise InputError(f"max_new_tokens={max_new_tokens!r}; give a whole number from 1 to {longest} (the "
                             "decoder's positions after the prompt)")
        rules = self.timestamp_rules(prompt_length) if timestamps else None
        return record_decoding(record, max_new_tokens=max_new_tokens or longest, num_beams=1, min_length=0,
                               bad_words_ids=tuple(self.record["suppress_tokens"]),
                               begin_suppress_tokens=tuple(self.record["begin_suppress_tokens"]), timestamps=rules)

    def timestamp_rules(self, prompt_length: int) -> Any:
        from zoo.tasks._whisper_timestamps import TimestampRules

        record = self.record
        stop = record.get("no_timestamps")
        if stop is None or "vocab_size" not in record or record["vocab_size"] <= int(stop) + 1:
            raise InputError("timestamps: this Whisper artifact has no timestamp tokens (or was exported before zoo "
                             "wrote them into its manifest); re-export it with this zoo, or leave --timestamps out")
        initial = record.get("max_initial_timestamp_index")
        return TimestampRules(int(stop), int(self.core.eos[0]), None if initial is None else int(initial),
                              prompt_length)

    def tokens(self, features: np.ndarray, language: str | None = None, task: str | None = None,
               max_new_tokens: int | None = None, timestamps: bool = False) -> list[np.ndarray]:
        """Each clip's generated token ids (EOS included where it stopped), greedy."""
        return self.run(features, language, task, max_new_tokens, timestamps)[0]

    def run(self, features: np.ndarray, language: str | None, task: str | None, max_new_tokens: int | None,
            timestamps: bool) -> tuple[list[np.ndarray], list[list[int]]]:
        """(each row's generated tokens, each row's prompt), ``WINDOWS_PER_RUN`` rows at a time: an hour of audio
        is 180 windows, whose cross-attention tensors together would not fit in memory."""
        rows: list[np.ndarray] = []
        prompts: list[list[int]] = []
        for first in range(0, len(features), WINDOWS_PER_RUN):
            encoded = self.core.encode({"input_features": features[first:first + WINDOWS_PER_RUN]})
            prompt = self.timed(self.prompt(language, task, encoded), timestamps)
            rows += self.core.generate(encoded, self.decoding(max_new_tokens, prompt.shape[1], timestamps),
                                       prompt=prompt)
            prompts += prompt.tolist()
        return rows, prompts

    def generate(self, items: Sequence[Any], *, language: str | None = None, task: str | None = None,
                 max_new_tokens: int | None = None, timestamps: bool = False) -> list[Any]:
        from zoo.tasks.results import Transcription

        if not items:
            raise InputError("transcribe got no clips; give an audio file path or a list of them")
        if not isinstance(timestamps, bool):
            raise InputError(f"timestamps={timestamps!r}; give true or false")
        batch = self.preprocessor(list(items))
        rows, prompts = self.run(batch.arrays["input_features"], language, task, max_new_tokens, timestamps)
        eos = set(self.core.eos.tolist())
        codes = {token: code for code, token in self.record["languages"].items()}
        out = []
        for clip, seconds in enumerate(batch.durations):
            mine = [r for r, owner in enumerate(batch.owners) if owner == clip]
            windows = [[int(t) for t in rows[r] if int(t) not in eos] for r in mine]
            spoken = next((codes[t] for t in prompts[mine[0]] if t in codes), "")
            if len(windows) > 1 and timestamps:
                segments = self.long_segments(windows, [batch.places[r] for r in mine], seconds)
                out.append(Transcription("".join(s.text for s in segments), seconds, chunks=len(windows),
                                         token_ids=tuple(t for s in segments for t in s.token_ids),
                                         segments=segments, language=spoken))
                continue
            # windows are joined on their words: the join compares text tokens, as the pipeline's does
            ids = windows[0] if len(windows) == 1 else long.join([self.words(w) for w in windows])
            segments = self.segments(ids, seconds) if timestamps else ()
            out.append(Transcription(self.text(ids), seconds, chunks=len(windows), token_ids=tuple(ids),
                                     segments=segments, language=spoken))
        return out

    def words(self, ids: list[int], stamps: bool = False) -> list[int]:
        """``ids`` without the tokenizer's special tokens, and without timestamps unless ``stamps``."""
        stop = self.record.get("no_timestamps")
        special = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        if stop is None:
            return [t for t in ids if t not in special]
        return [t for t in ids if (stamps and t > int(stop)) or (t < int(stop) and t not in special)]

    def text(self, ids: list[int]) -> str:
        """The words of ``ids``: special tokens and timestamps (ids past ``<|notimestamps|>``) left out."""
        stop = self.record.get("no_timestamps")
        words = [t for t in ids if stop is None or t <= int(stop)]
        return self.tokenizer.decode(words, skip_special_tokens=True)

    def segments(self, ids: list[int], seconds: float) -> tuple[Any, ...]:
        from zoo.tasks._whisper_timestamps import Segment, split

        first = int(self.record["no_timestamps"]) + 1
        return tuple(Segment(start, end, self.text(piece), tuple(piece))
                     for start, end, piece in split(ids, first, seconds))

    def long_segments(self, windows: list[list[int]], places: list[long.Window], seconds: float) -> tuple[Any, ...]:
        """A clip's segments over its windows (``_whisper_long.timed_join``); their tokens are text only. Where the
        pipeline has no time (no start timestamp came, or none closed the last segment), the previous segment's end
        (else 0) and the clip's end stand in."""
        from zoo.tasks._whisper_timestamps import Segment

        first = int(self.record["no_timestamps"]) + 1
        out: list[Segment] = []
        for piece in long.timed_join([self.words(w, stamps=True) for w in windows], places, first):
            start = piece.start if piece.start is not None else out[-1].end if out else 0.0
            end = piece.end if piece.end is not None else max(seconds, start)
            out.append(Segment(start, end, self.text(piece.tokens), tuple(piece.tokens)))
        return tuple(out)
