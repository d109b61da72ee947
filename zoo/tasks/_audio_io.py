"""Clips in: audio files read with soundfile, mixed to mono, resampled with soxr, truncated.

A clip may be a file path (anything libsndfile reads: WAV, FLAC, OGG/Vorbis,
Opus, AIFF, MP3), a dict in the HF ``datasets`` shapes (``{"array",
"sampling_rate"}`` decoded, or ``{"bytes", "path"}`` undecoded), or a 1-D float
array already at the model's sampling rate. Only the part of a long file that
the model can use is read (plus a little for the resampler), so a ten-minute
recording costs no more than the model's window.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
# File rates the resampler is asked to handle: telephone-band recordings up to studio masters.
# Outside this range a file is almost surely mislabelled (soxr would still "resample" a 1 Hz
# file into millions of samples, or a 2 GHz one into none).
MIN_RATE, MAX_RATE = 1_000, 768_000
RESAMPLER_MARGIN_SECONDS = 0.05  # read a little past the model's window so the resampler sees real context
CLIP_FORMS = ("an audio file path (WAV, FLAC, OGG ...), a 1-D float array at {rate} Hz, "
              "or a dict {{'array': ..., 'sampling_rate': ...}}")


def audio_library(name: str) -> Any:
    """soundfile or soxr, or one clear line saying how to install them (they are the [audio] extra)."""
    import importlib

    try:
        return importlib.import_module(name)
    except (ImportError, OSError):  # soundfile raises OSError when libsndfile itself is missing
        from zoo.errors import ConfigError

        raise ConfigError(f"reading audio needs {name}, which is not installed; install the audio extra: "
                          "pip install 'zoo-toolkit[audio]'") from None


def load_clip(item: Any, where: str, rate: int, limit: int, minimum: int) -> tuple[np.ndarray, float]:
    """(mono float32 clip at ``rate`` holding at most ``limit`` samples, duration of the original in seconds)."""
    samples, source_rate, total = _decode(item, where, rate, limit)
    if total == 0 or samples.size == 0:
        raise InputError(f"{where} holds no samples (an empty recording); give a clip of at least "
                         f"{1000 * minimum / rate:.0f} ms")
    if not np.isfinite(samples).all():
        raise InputError(f"{where} holds NaN or infinite samples; re-encode it as ordinary PCM or float audio")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples  # channels averaged, as librosa's to_mono
    clip = resample(mono, source_rate, rate, where)[:limit]
    duration = total / source_rate
    if len(clip) < minimum:
        raise InputError(f"{where} is {1000 * duration:.1f} ms long; this model needs at least "
                         f"{1000 * minimum / rate:.0f} ms ({minimum} samples at {rate} Hz, one analysis window)")
    return np.ascontiguousarray(clip, dtype=np.float32), duration


def check_rate(source_rate: int, rate: int, where: str) -> None:
    if not MIN_RATE <= source_rate <= MAX_RATE:
        raise InputError(f"{where} is sampled at {source_rate} Hz; zoo resamples (soxr) from {MIN_RATE} to "
                         f"{MAX_RATE} Hz to the model's {rate} Hz: check the file's header, or re-encode it "
                         f"at {rate} Hz")


def resample(samples: np.ndarray, source_rate: int, rate: int, where: str) -> np.ndarray:
    check_rate(source_rate, rate, where)
    if source_rate == rate:
        return samples
    return audio_library("soxr").resample(samples, source_rate, rate)


def _decode(item: Any, where: str, rate: int, limit: int) -> tuple[np.ndarray, int, int]:
    """(samples [n] or [n, channels], their rate, frames in the whole recording)."""
    if isinstance(item, (str, Path)):
        path = Path(item).expanduser()
        if not path.is_file():
            raise InputError(f"{where}: no such audio file; give {CLIP_FORMS.format(rate=rate)}")
        return _read(path, where, rate, limit)
    if isinstance(item, dict):
        return _decode_dict(item, where, rate, limit)
    if isinstance(item, np.ndarray):
        return _float_array(item, where, rate), rate, len(item)
    raise InputError(f"{where} is {type(item).__name__}; this audio model expects {CLIP_FORMS.format(rate=rate)}")


def _decode_dict(item: dict[str, Any], where: str, rate: int, limit: int) -> tuple[np.ndarray, int, int]:
    if item.get("array") is not None:
        given = item.get("sampling_rate")
        if not isinstance(given, (int, np.integer)) or isinstance(given, bool) or given < 1:
            raise InputError(f"{where}: 'sampling_rate' is {given!r}; give the array's rate in Hz as an integer")
        array = _float_array(np.asarray(item["array"]), where, rate)
        return array, int(given), len(array)
    if item.get("bytes") is not None:
        return _read(io.BytesIO(item["bytes"]), where, rate, limit)
    if item.get("path"):
        return _decode(item["path"], where, rate, limit)
    raise InputError(f"{where} is a dict with keys {sorted(item)}; give {CLIP_FORMS.format(rate=rate)}")


def _float_array(array: np.ndarray, where: str, rate: int) -> np.ndarray:
    if array.dtype.kind != "f" or array.ndim not in (1, 2):
        raise InputError(f"{where} is an array of dtype {array.dtype} and shape {array.shape}; give float samples "
                         f"in [-1, 1], shape (samples,) or (samples, channels), at {rate} Hz (or a dict with "
                         "its 'sampling_rate')")
    return array.astype(np.float32, copy=False)


def _read(source: Any, where: str, rate: int, limit: int) -> tuple[np.ndarray, int, int]:
    soundfile = audio_library("soundfile")
    try:
        with soundfile.SoundFile(source) as audio:
            source_rate, total = int(audio.samplerate), int(audio.frames)
            check_rate(source_rate, rate, where)  # before reading: a wrong rate makes the read size absurd
            wanted = math.ceil((limit / rate + RESAMPLER_MARGIN_SECONDS) * source_rate)
            samples = audio.read(frames=min(total, wanted), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{where} is not audio that soundfile can read ({reason}); give a WAV, FLAC, "
                         "OGG, Opus, AIFF or MP3 file") from None
    return samples, source_rate, total
