"""Training data for audio models: audiofolder and CSV layouts, ``builtin:tones``, batches of features.

    --data ./clips/             audiofolder: clips/<label>/<clip>.wav (or clips/<split>/<label>/<clip>.wav)
    --data clips.csv            a CSV with a column of clip paths and a label column; relative paths are
                                taken relative to the CSV's folder
    --data builtin:tones        generated offline: pure tones, chords, chirps and noise bursts

Clips are read here with soundfile (``datasets``' own Audio decoding needs
torchcodec, which this torch cannot load), so an ``Audio`` column of a saved data
set is read undecoded and its bytes go through the same reader as a file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import DataError, InputError
from zoo.tasks._audio import AudioSettings
from zoo.tasks._audio_io import AUDIO_SUFFIXES

AUDIO_COLUMNS = ("audio", "path", "file", "file_name", "filename", "clip", "wav")
SPLIT_FOLDERS = ("train", "validation", "valid", "val", "dev", "test")
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # a save_to_disk folder: the generic reader takes it

# ---------------------------------------------------------------- layouts on disk


def read_audio_data(data: str, read_folder: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Splits of an audiofolder (``read_folder``, class folders by default) or an audio CSV; None for layouts
    the generic reader handles."""
    path = Path(data).expanduser()
    if path.is_dir() and not any((path / m).is_file() for m in SAVED_MARKERS):
        return (read_folder or read_audiofolder)(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        return {"train": read_csv(path)}
    return None


def read_audiofolder(root: Path) -> dict[str, Any]:
    """root/<label>/<clip> (one split) or root/<split>/<label>/<clip>; every class folder must hold clips."""
    folders = _subfolders(root)
    splits = [f for f in folders if f.name in SPLIT_FOLDERS]
    if splits and len(splits) == len(folders):
        tables = {f.name: _class_folders(f) for f in splits}
    else:
        tables = {"train": _class_folders(root)}
    names = sorted({label for rows in tables.values() for _, label in rows})
    if len(names) < 2:
        raise DataError(f"audiofolder '{root}' has {len(names)} class folder(s) ({', '.join(names) or 'none'}); "
                        "classification needs at least 2: add one folder of clips per label")
    return {split: _table([p for p, _ in rows], [label for _, label in rows], names)
            for split, rows in tables.items()}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> list[tuple[str, str]]:
    classes = _subfolders(folder)
    if not classes:
        raise DataError(f"folder '{folder}' is no audiofolder: expected {folder}/<label>/<clip>.wav (one folder "
                        f"per label, clips ending in {', '.join(AUDIO_SUFFIXES)})")
    rows = []
    for label_dir in classes:
        clips = sorted(p for p in label_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not clips:
            raise DataError(f"class folder '{label_dir}' holds no audio clips ({', '.join(AUDIO_SUFFIXES)}); "
                            "add clips to it, or remove the folder")
        rows += [(str(p.resolve()), label_dir.name) for p in clips]
    return rows


def read_csv(path: Path) -> Any:
    """Every column as text; cells naming audio files are made absolute (relative to the CSV's folder)."""
    import datasets

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if not rows:
        raise DataError(f"data file '{path}' has no rows; give a header (e.g. path,label) and one row per clip")
    columns = {name: [_resolved(path.parent, row.get(name) or "") for row in rows] for name in rows[0]}
    return datasets.Dataset.from_dict(columns)


def _resolved(base: Path, cell: str) -> str:
    if Path(cell).suffix.lower() in AUDIO_SUFFIXES and not Path(cell).expanduser().is_absolute():
        return str((base / cell).resolve())
    return cell


def _table(paths: list[str], labels: list[str], names: list[str]) -> Any:
    import datasets

    features = datasets.Features({"audio": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"audio": paths, "label": [names.index(x) for x in labels]}, features=features)


# ---------------------------------------------------------------- columns and encoding


def audio_column(table: Any, given: str | None) -> str:
    """The clip column: one named by --text-column, an Audio feature, decoded dicts, or a usual name."""
    import datasets

    from zoo.tasks.base import choose_column

    names = list(table.column_names)
    typed = [n for n, f in table.features.items()
             if isinstance(f, datasets.Audio) or (isinstance(f, dict) and ("array" in f or "bytes" in f))]
    return choose_column(names, given, typed + [n for n in AUDIO_COLUMNS if n in names], "audio", "--text-column")


def encode_clips(table: Any, columns: dict[str, str], labels: Any, settings: AudioSettings,
                 what: str) -> Any:
    """Every clip read, resampled and turned into the runtime's own features, once, up front."""
    import datasets

    from zoo.data.encode import label_indices

    column = columns["input"]
    if isinstance(table.features[column], datasets.Audio):
        table = table.cast_column(column, datasets.Audio(decode=False))  # bytes/path: read by soundfile below
    features = []
    for row, item in enumerate(table[column]):
        try:
            clip, _ = settings.load(item, f"row {row} of {what}")
        except InputError as exc:
            raise DataError(f"{exc}; fix or drop that row") from None
        features.append(settings.clip_features(clip))
    targets = label_indices(table, columns["label"], labels, what)
    return AudioExamples(features, targets, settings)


class AudioExamples:
    """Per-clip features (waveforms of any length, or fixed filterbanks) with their class indices."""

    def __init__(self, features: list[np.ndarray], targets: list[int], settings: AudioSettings):
        self.features, self.targets, self.settings = features, targets, settings

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import torch

        arrays = self.settings.collate([self.features[i] for i in indices])
        out = {name: torch.from_numpy(value) for name, value in arrays.items()}
        out["labels"] = torch.tensor([self.targets[i] for i in indices], dtype=torch.long)
        return out

    def target_count(self, indices: list[int]) -> int:
        return len(indices)


# ---------------------------------------------------------------- builtin:tones

TONE_CLASSES = ("tone", "chord", "chirp", "noise-bursts")
TONE_RATE = 16_000
TONES_PER_CLASS = 100
PITCH_HZ = (150.0, 1500.0)  # log-uniform fundamental
SECONDS = (0.6, 1.4)  # uniform duration


def tones() -> tuple[Any, str]:
    """(DatasetDict with a 'train' split, sha256) of generated clips; the same bytes on every machine.

    The classes are sounds as one meets them: a sustained pure tone, a struck chord
    (a major or minor triad decaying away), a run of short bird-like chirps (rising or
    falling sweeps) and bursts of noise. Every clip draws its pitch (log-uniform
    150-1500 Hz), gain (0.1-0.8), duration (0.6-1.4 s) and background noise, so telling
    the classes apart takes their structure, not their loudness, pitch or length.
    """
    import datasets

    rng = np.random.default_rng(20240909)
    clips, labels = [], []
    for _ in range(TONES_PER_CLASS):
        for index, kind in enumerate(TONE_CLASSES):
            clips.append(_tone_clip(kind, rng))
            labels.append(index)
    features = datasets.Features({
        "audio": {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")},
        "label": datasets.ClassLabel(names=list(TONE_CLASSES))})
    rows = {"audio": [{"array": c, "sampling_rate": TONE_RATE} for c in clips], "label": labels}
    table = datasets.Dataset.from_dict(rows, features=features)
    digest = hashlib.sha256(b"".join(c.tobytes() for c in clips) + np.asarray(labels, np.int64).tobytes())
    return datasets.DatasetDict({"train": table}), digest.hexdigest()


def _tone_clip(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(rng.uniform(*SECONDS) * TONE_RATE)) / TONE_RATE
    pitch = float(np.exp(rng.uniform(*np.log(PITCH_HZ))))
    if kind == "tone":
        sound = np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chord":
        sound = _struck_chord(t, pitch, rng)
    elif kind == "chirp":
        sound = _chirps(t, pitch, rng)
    else:
        sound = _noise_bursts(t, rng)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms ramps: no clicks at the edges
    noise = rng.uniform(0.002, 0.03) * rng.standard_normal(len(t))
    return (rng.uniform(0.1, 0.8) * sound * fade + noise).astype(np.float32)


def _struck_chord(t: np.ndarray, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """A major or minor triad, struck once and decaying (a time constant of 0.2-0.5 s)."""
    third = 4 if rng.random() < 0.5 else 3
    notes = sum(np.sin(2 * np.pi * pitch * 2 ** (s / 12) * t + rng.uniform(0, 2 * np.pi)) for s in (0, third, 7))
    return notes / 3 * np.exp(-t / rng.uniform(0.2, 0.5))


def _chirps(t: np.ndarray, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """Short exponential sweeps over about an octave, repeated with gaps, all rising or all falling."""
    sound = np.zeros_like(t)
    length, gap = rng.uniform(0.06, 0.12), rng.uniform(0.04, 0.1)
    ratio = rng.uniform(1.8, 2.5) ** (1 if rng.random() < 0.5 else -1)
    for start in np.arange(rng.uniform(0, gap), t[-1] - length, length + gap):
        inside = (t >= start) & (t < start + length)
        local = t[inside] - start
        sound[inside] = np.sin(2 * np.pi * pitch * length / np.log(ratio) * (ratio ** (local / length) - 1))
    return sound


def _noise_bursts(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sound = np.zeros_like(t)
    for _ in range(int(rng.integers(2, 5))):
        start = rng.uniform(0, t[-1] - 0.15)
        inside = (t >= start) & (t < start + rng.uniform(0.05, 0.15))
        sound[inside] = rng.uniform(-1, 1, int(inside.sum()))
    return sound
