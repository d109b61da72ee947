"""Speech-recognition training data: clips and their transcripts, laid out as HF ``audiofolder`` lays them out.

    --data ./speech/            speech/metadata.csv (or .jsonl, .parquet): a ``file_name`` column (each clip's
                                path, relative to the metadata file) and a ``transcription`` or ``text`` column;
                                or one such folder per split (speech/train/, speech/test/ ...)
    --data speech.csv           a CSV of clip paths (relative to the CSV's folder) and transcripts
    --data ./saved/ | ORG/NAME  a save_to_disk folder or hub data set with an Audio column

datasets' own ``audiofolder`` loader decodes clips with torchcodec, which this torch cannot load, so
this module follows its layout rules (the metadata file names; ``file_name``, or ``X_file_name`` for a
clip column named ``X``) and the clips are read with soundfile, as the runtime reads them.

Each clip becomes the runtime's own input (a normalised waveform for CTC models; Whisper's log-mel
from transformers' feature extractor, batch by batch) and each transcript the model tokenizer's ids:
CTC labels are the characters (``Wav2Vec2CTCTokenizer``), Whisper labels the decoder's tokens behind
the prompt its tokenizer writes (language, task, ``<|notimestamps|>``). Labels are padded with
``IGNORE_INDEX``; ``references`` keep each transcript as the tokenizer spells it, for the word error rate.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConfigError, DataError, InputError
from zoo.spec import ModelSpec
from zoo.tasks._audio import AudioSettings
from zoo.tasks._audio_data import SPLIT_FOLDERS, audio_column, read_audio_data

METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # datasets' FolderBasedBuilder's names
TRANSCRIPT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text")

# ---------------------------------------------------------------- layouts on disk


def read_asr_data(data: str) -> dict[str, Any] | None:
    """Splits of an audiofolder with metadata or of a CSV; None for layouts the generic reader handles."""
    return read_audio_data(data, read_folder=read_audiofolder)


def read_audiofolder(root: Path) -> dict[str, Any]:
    """root/metadata.* (one split), else root/<split>/metadata.* for each split folder."""
    own = _metadata_file(root)
    if own is not None:
        return {"train": metadata_table(own)}
    splits = {f.name: _metadata_file(f) for f in sorted(root.iterdir()) if f.is_dir() and f.name in SPLIT_FOLDERS}
    found = {name: metadata_table(file) for name, file in splits.items() if file is not None}
    if not found:
        raise DataError(f"folder '{root}' has no {METADATA_FILES[0]}: speech recognition reads an audiofolder, the "
                        f"clips beside a metadata.csv with a file_name and a transcription column (or one such "
                        f"folder per split: {root}/train, {root}/test)")
    return found


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)


def metadata_table(file: Path) -> Any:
    """The metadata rows, the clip column (``file_name`` -> ``audio``, ``X_file_name`` -> ``X``) made absolute."""
    import datasets

    columns = _read_metadata(file)
    named = [c for c in columns if c == "file_name" or c.endswith("_file_name")]
    if len(named) != 1:
        raise DataError(f"{file} has {'no' if not named else 'several'} clip column(s) ({', '.join(named) or 'none'} "
                        f"among {', '.join(columns)}); the audiofolder convention names each clip's path, relative "
                        "to the metadata file, in one file_name column")
    column = named[0]
    paths = [str((file.parent / str(p)).resolve()) if p else "" for p in columns.pop(column)]
    return datasets.Dataset.from_dict({column.removesuffix("file_name").removesuffix("_") or "audio": paths,
                                       **columns})


def _read_metadata(file: Path) -> dict[str, list[Any]]:
    """Columns of a metadata file; CSV cells stay text (a transcript "42" is words, not a number)."""
    if file.suffix == ".csv":
        with file.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif file.suffix == ".jsonl":
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    else:
        import datasets

        rows = datasets.Dataset.from_parquet(str(file)).to_list()
    if not rows:
        raise DataError(f"{file} has no rows; give a header (file_name,transcription) and one row per clip")
    return {name: [row.get(name) for row in rows] for name in rows[0]}


# ---------------------------------------------------------------- columns


def asr_columns(table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
    """The clip column and the transcript column (``--text-column`` / ``--label-column`` name them)."""
    from zoo.tasks.base import choose_column

    names = list(table.column_names)
    audio = _clip_column(table, input_column)
    if label_column is not None:
        return {"input": audio, "label": choose_column(names, label_column, (), "transcript", "--label-column")}
    found = next((n for n in TRANSCRIPT_COLUMNS if n in names and n != audio), None)
    if found is None:
        raise DataError(f"no transcript column among the data's columns ({', '.join(names)}); name it transcription "
                        "or text (the audiofolder convention), or give --label-column COLUMN")
    return {"input": audio, "label": found}


def _clip_column(table: Any, given: str | None) -> str:
    """audio-classification's rule (``--text-column``, an Audio feature, a usual name), else the one column of
    audio file names (an audiofolder's ``speech_file_name`` becomes ``speech``, as datasets names it)."""
    from zoo.tasks._audio_io import AUDIO_SUFFIXES

    try:
        return audio_column(table, given)
    except DataError:
        paths = [n for n, f in table.features.items() if getattr(f, "dtype", None) == "string"
                 and all(Path(str(v)).suffix.lower() in AUDIO_SUFFIXES for v in table[n][:8])]
        if given is not None or len(paths) != 1:
            raise
        return paths[0]


# ---------------------------------------------------------------- encoding


def read_clips(table: Any, column: str, settings: AudioSettings, what: str) -> list[np.ndarray]:
    """Every clip read and resampled (mono, the model's rate); one too long for the model is refused, since its
    transcript would no longer match what is left of it."""
    import datasets

    if isinstance(table.features[column], datasets.Audio):
        table = table.cast_column(column, datasets.Audio(decode=False))  # bytes/path: read by soundfile below
    window = settings.max_samples / settings.sampling_rate
    clips = []
    for row, item in enumerate(table[column]):
        try:
            shown = f" ('{item}')" if isinstance(item, str) else ""
            clip, seconds = settings.load(item, f"row {row} of the {what} data{shown}")
        except InputError as exc:
            raise DataError(f"{exc}; fix or drop that row") from None
        if seconds > window + 1e-9:
            raise DataError(f"row {row} of the {what} data is a {seconds:.1f} s clip; the model takes at most "
                            f"{window:g} s: cut it into shorter clips, each with its own transcript")
        clips.append(clip)
    return clips


def transcripts(table: Any, column: str, what: str) -> list[str]:
    values = list(table[column])
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            shown = "an empty transcript" if isinstance(value, str) or value is None else type(value).__name__
            raise DataError(f"row {row} of the {what} data holds {shown} in column '{column}'; every clip needs the "
                            "text spoken in it")
    return values


def pad_labels(rows: list[list[int]]) -> Any:
    import torch

    from zoo.data.labels import IGNORE_INDEX

    width = max(len(r) for r in rows)
    return torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class CtcExamples:
    """Normalised waveforms, their character ids, and what the loss and WER need beside them."""

    features: list[np.ndarray]
    labels: list[list[int]]
    references: list[str]  # the transcripts as the tokenizer spells them (its case, its characters)
    settings: AudioSettings
    vocab: Any  # zoo.tasks._asr_ctc.CtcVocab: the runtime's decoding, for the hypotheses

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        arrays = self.settings.collate([self.features[i] for i in indices])
        out: dict[str, Any] = {name: torch.from_numpy(value) for name, value in arrays.items()}
        out["samples"] = torch.tensor([len(self.features[i]) for i in indices], dtype=torch.long)
        out["labels"] = pad_labels([self.labels[i] for i in indices])
        out["references"] = [self.references[i] for i in indices]
        out["decode"] = self.vocab.decode
        return out

    def target_count(self, indices: list[int]) -> int:
        return sum(len(self.labels[i]) for i in indices)

    def packed_to(self, max_length: int) -> CtcExamples:
        return self  # one clip per row


def encode_ctc(table: Any, columns: dict[str, str], spec: ModelSpec, conv: dict[str, list[int]],
               what: str) -> CtcExamples:
    """``conv``: the feature encoder's ``conv_kernel`` and ``conv_stride`` (the frames a clip makes)."""
    import transformers

    from zoo.tasks._asr_ctc import CtcVocab
    from zoo.tasks._memory import conv_lengths

    tokenizer = transformers.AutoTokenizer.from_pretrained(_folder(spec))
    settings = AudioSettings.from_spec(spec)
    texts = transcripts(table, columns["label"], what)
    clips = read_clips(table, columns["input"], settings, what)
    labels = [list(ids) for ids in tokenizer(texts)["input_ids"]]
    for row, (text, ids, clip) in enumerate(zip(texts, labels, clips)):
        _check_characters(tokenizer, text, ids, f"row {row} of the {what} data")
        # CTC emits one token per frame and needs a blank between two equal tokens in a row
        needed = len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))
        frames = conv_lengths(len(clip), conv["conv_kernel"], conv["conv_stride"])[-1]
        if needed > frames:
            raise DataError(f"row {row} of the {what} data: its transcript needs {needed} CTC frames but its "
                            f"{len(clip) / settings.sampling_rate:.2f} s clip makes {frames}; give that clip "
                            "a longer recording or a shorter transcript")
    references = [tokenizer.decode(ids, group_tokens=False) for ids in labels]
    return CtcExamples([settings.clip_features(c) for c in clips], labels, references, settings,
                       CtcVocab.from_tokenizer(tokenizer))


def _check_characters(tokenizer: Any, text: str, ids: list[int], where: str) -> None:
    """Characters the CTC vocabulary lacks would all become <unk>: the model cannot learn to write them."""
    unknown = tokenizer.unk_token_id
    if unknown is None or unknown not in ids or tokenizer.unk_token in text:
        return
    missing = sorted({c for c in text if c != " " and tokenizer(c)["input_ids"] == [unknown]})
    known = "".join(t for t in tokenizer.get_vocab() if len(t) == 1)
    raise DataError(f"{where}: the model's vocabulary lacks {', '.join(repr(c) for c in missing)} (in {text!r}); "
                    f"write transcripts in its characters ({known}), e.g. in its case")


def _folder(spec: ModelSpec) -> Path:
    if not spec.local_path:
        raise ConfigError(f"{spec.name}: speech recognition trains from a model folder with its tokenizer "
                          "(save_pretrained of the model and its processor)")
    return Path(spec.local_path)


# ---------------------------------------------------------------- Whisper


@dataclass
class WhisperExamples:
    """Clips (log-mel made per batch by the feature extractor: 30 s of features each would fill memory up front)
    and the decoder's labels."""

    clips: list[np.ndarray]
    labels: list[list[int]]
    references: list[str]
    extractor: Any  # transformers' WhisperFeatureExtractor
    tokenizer: Any
    prompt: dict[str, str]  # generate's language and task, as the labels' prefix has them

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        clips = [self.clips[i] for i in indices]
        features = self.extractor(clips, sampling_rate=self.extractor.sampling_rate, return_tensors="np")
        return {"input_features": torch.from_numpy(np.asarray(features["input_features"], np.float32)),
                "labels": pad_labels([self.labels[i] for i in indices]),
                "references": [self.references[i] for i in indices], "prompt": self.prompt, "decode": self.decode}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def target_count(self, indices: list[int]) -> int:
        return sum(len(self.labels[i]) for i in indices)

    def packed_to(self, max_length: int) -> WhisperExamples:
        return self

    @property
    def generation_defaults(self) -> dict[str, str]:
        """What the saved model's generation_config.json names: the language and task the labels were written in,
        so that ``generate`` (and the exported runtime, which reads the same file) transcribes as it was trained."""
        return dict(self.prompt)


def encode_whisper(table: Any, columns: dict[str, str], spec: ModelSpec, extractor: Any, what: str) -> WhisperExamples:
    """Labels: the prompt ``generate`` starts the decoder with (language, task, ``<|notimestamps|>``; its start
    token is the model's decoder start, which transformers puts in front), the transcript's tokens, the end."""
    import transformers

    from zoo.folders import read_json

    folder = _folder(spec)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = read_json(folder / "config.json")
    prompt, prefix = whisper_prefix(tokenizer, _generation(folder))
    texts = transcripts(table, columns["label"], what)
    settings = AudioSettings(features="waveform", sampling_rate=int(extractor.sampling_rate), do_normalize=False,
                             attention_mask=False, max_seconds=float(extractor.chunk_length))
    clips = read_clips(table, columns["input"], settings, what)
    words = tokenizer(texts, add_special_tokens=False)["input_ids"]
    longest = int(config.get("max_target_positions", 448))
    labels = []
    for row, ids in enumerate(words):
        labels.append(prefix + list(ids) + [int(tokenizer.eos_token_id)])
        if len(labels[-1]) >= longest:
            raise DataError(f"row {row} of the {what} data: its transcript makes {len(labels[-1])} decoder tokens; "
                            f"the model writes at most {longest - 1}: cut the clip and its transcript in parts")
    return WhisperExamples(clips, labels, [tokenizer.decode(ids) for ids in words], extractor, tokenizer, prompt)


def whisper_prefix(tokenizer: Any, generation: dict[str, Any]) -> tuple[dict[str, str], list[int]]:
    """(generate's language/task keywords, the label prefix after the start token) for the language the processor
    was saved with (``WhisperProcessor.from_pretrained(..., language=...)``) or the generation config's; the ids
    are the model's own (``lang_to_id``, ``task_to_id``), which the runtime's prompt uses too."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    languages = {str(k).strip("<|>"): int(v) for k, v in (generation.get("lang_to_id") or {}).items()}
    tasks = {str(k): int(v) for k, v in (generation.get("task_to_id") or {}).items()}
    given = getattr(tokenizer, "language", None) or generation.get("language")
    task = getattr(tokenizer, "task", None) or generation.get("task") or "transcribe"
    prompt: dict[str, str] = {}
    prefix: list[int] = []
    if languages:
        if given is None:
            raise ConfigError("a multilingual Whisper model learns transcripts of one language: save its processor "
                              "with it (WhisperProcessor.from_pretrained(MODEL, language='de', task='transcribe')"
                              f".save_pretrained(MODEL)); it knows: {', '.join(sorted(languages))}")
        code = TO_LANGUAGE_CODE.get(str(given).lower(), str(given).lower()).strip("<|>")
        if code not in languages:
            raise ConfigError(f"language {given!r} (the processor's) is not one this Whisper model knows; valid: "
                              f"{', '.join(sorted(languages))}")
        prompt["language"], prefix = code, [languages[code]]
    if tasks:
        if task not in tasks:
            raise ConfigError(f"task {task!r} (the processor's): valid: {', '.join(sorted(tasks))}")
        prompt["task"] = task
        prefix.append(tasks[task])
    if generation.get("no_timestamps_token_id") is not None:
        prefix.append(int(generation["no_timestamps_token_id"]))
    return prompt, prefix


def _generation(folder: Path) -> dict[str, Any]:
    from zoo.folders import read_json

    path = folder / "generation_config.json"
    return read_json(path) if path.is_file() else {}
