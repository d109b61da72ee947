"""Audio model inputs from waveforms, in numpy alone (the torch-free runtime computes them).

Two kinds, after transformers' own feature extractors (tests/test_audio_features.py
holds the parity tests and their measured differences):

- ``waveform`` (wav2vec2, HuBERT and their kin, ``Wav2Vec2FeatureExtractor``): each
  clip normalised to zero mean and unit variance over its own samples, then the
  batch zero-padded to its longest clip, with an attention mask of real samples.
- ``fbank`` (the Audio Spectrogram Transformer, ``ASTFeatureExtractor``): a
  Kaldi-compatible log-mel filterbank (25 ms Hann windows every 10 ms, DC offset
  removed and pre-emphasis per frame, a 512-point power spectrum, triangles on
  Kaldi's mel scale from 20 Hz to Nyquist, natural log), zero-padded or truncated
  to a fixed number of frames, then ``(x - mean) / (2 * std)`` with AST's data-set
  statistics.
- ``whisper`` (Whisper, ``WhisperFeatureExtractor``): the clip zero-padded (or cut)
  to 30 s, a centred STFT (reflect padding, periodic Hann window of 400 samples
  every 160), the power spectrum through Slaney-normalised triangles on the
  Slaney mel scale from 0 to 8 kHz, log10 floored at 1e-10, the last frame
  dropped, everything more than 8 (80 dB) below the clip's peak raised to it,
  then ``(x + 4) / 4``.
"""

from __future__ import annotations

import numpy as np

# Kaldi's frame settings at any sampling rate: 25 ms windows every 10 ms
FRAME_SECONDS = 0.025
HOP_SECONDS = 0.010
PREEMPHASIS = 0.97
LOW_FREQUENCY = 20.0  # Hz: Kaldi's default low edge of the lowest mel triangle
# the smallest positive float32: Kaldi's floor before the log, so silence stays finite
MEL_FLOOR = float(np.finfo(np.float32).eps)
VARIANCE_EPS = 1e-7  # Wav2Vec2FeatureExtractor's epsilon: silence normalises to zeros, not NaN


def frame_length(sampling_rate: int) -> int:
    """Samples in one analysis window (400 at 16 kHz): no clip may be shorter."""
    return int(round(FRAME_SECONDS * sampling_rate))


# ---------------------------------------------------------------- waveform models


def normalize_waveform(clip: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the clip's own samples (float64 sums, float32 result)."""
    x = clip.astype(np.float64)
    return ((x - x.mean()) / np.sqrt(x.var() + VARIANCE_EPS)).astype(np.float32)


def pad_waveforms(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(values [batch, longest], attention_mask [batch, longest] int64): zeros after each clip's end."""
    longest = max(len(c) for c in clips)
    values = np.zeros((len(clips), longest), dtype=np.float32)
    mask = np.zeros((len(clips), longest), dtype=np.int64)
    for row, clip in enumerate(clips):
        values[row, :len(clip)] = clip
        mask[row, :len(clip)] = 1
    return values, mask


# ---------------------------------------------------------------- filterbank models


def kaldi_mel(hz: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filters(num_mel_bins: int, fft_length: int, sampling_rate: int) -> np.ndarray:
    """[fft_length // 2 + 1, num_mel_bins] triangles, equally spaced and triangular on Kaldi's mel scale."""
    edges = np.linspace(kaldi_mel(LOW_FREQUENCY), kaldi_mel(sampling_rate / 2), num_mel_bins + 2)
    bins = kaldi_mel(np.arange(fft_length // 2 + 1) * sampling_rate / fft_length)[:, None]
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def frames(clip: np.ndarray, length: int, hop: int) -> np.ndarray:
    """[n_frames, length] windows of a clip, the last one ending inside it (Kaldi's snip_edges)."""
    count = 1 + (len(clip) - length) // hop
    return np.lib.stride_tricks.sliding_window_view(clip, length)[::hop][:count]


def log_mel_fbank(clip: np.ndarray, sampling_rate: int, num_mel_bins: int) -> np.ndarray:
    """[n_frames, num_mel_bins] Kaldi-compatible log-mel filterbank energies of one clip (float64)."""
    length = frame_length(sampling_rate)
    hop = int(round(HOP_SECONDS * sampling_rate))
    fft_length = 1 << (length - 1).bit_length()  # Kaldi rounds the window up to a power of two
    x = frames(clip.astype(np.float64), length, hop)
    x = x - x.mean(axis=1, keepdims=True)  # DC offset, per frame
    # pre-emphasis per frame; Kaldi lets the first sample emphasise itself
    x = np.concatenate([x[:, :1] * (1 - PREEMPHASIS), x[:, 1:] - PREEMPHASIS * x[:, :-1]], axis=1)
    x = x * np.hanning(length)  # Kaldi's "hanning": the symmetric Hann window
    power = np.abs(np.fft.rfft(x, n=fft_length, axis=1)) ** 2
    return np.log(np.maximum(power @ mel_filters(num_mel_bins, fft_length, sampling_rate), MEL_FLOOR))


def ast_features(clip: np.ndarray, sampling_rate: int, num_mel_bins: int, max_frames: int,
                 mean: float | None, std: float | None) -> np.ndarray:
    """[max_frames, num_mel_bins] float32: the filterbank zero-padded / truncated, then AST's normalisation."""
    bank = log_mel_fbank(clip, sampling_rate, num_mel_bins)[:max_frames]
    fixed = np.zeros((max_frames, num_mel_bins), dtype=np.float64)
    fixed[:len(bank)] = bank
    if mean is not None and std is not None:
        # AST divides by twice the standard deviation (its authors' choice, kept for parity)
        fixed = (fixed - mean) / (2 * std)
    return fixed.astype(np.float32)


def fbank_samples(sampling_rate: int, max_frames: int) -> int:
    """Samples that fill ``max_frames`` frames: more are truncated away by the features anyway."""
    return frame_length(sampling_rate) + (max_frames - 1) * int(round(HOP_SECONDS * sampling_rate))


# ---------------------------------------------------------------- Whisper


WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_SECONDS = 30  # every clip becomes exactly this long: the encoder's positions are fixed
WHISPER_MAX_HZ = 8000.0
WHISPER_FLOOR = 1e-10
WHISPER_RANGE = 8.0  # log10 units kept below the peak (80 dB)


def slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear to 1 kHz (15 mels), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log, linear)


def slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), 200.0 * mel / 3.0)


def whisper_mel_filters(num_mel_bins: int, sampling_rate: int, n_fft: int = WHISPER_N_FFT) -> np.ndarray:
    """[n_fft // 2 + 1, num_mel_bins] triangles, equally spaced on Slaney's scale, each of unit area (Slaney)."""
    edges = slaney_hz(np.linspace(slaney_mel(0.0), slaney_mel(WHISPER_MAX_HZ), num_mel_bins + 2))
    bins = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)[:, None]
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (right - left))


def whisper_features(clip: np.ndarray, sampling_rate: int, filters: np.ndarray) -> np.ndarray:
    """[mel bins, 3000] float32 log-mel of one clip, padded with zeros (or cut) to 30 s first."""
    samples = WHISPER_SECONDS * sampling_rate
    padded = np.zeros(samples, dtype=np.float64)
    padded[:min(len(clip), samples)] = clip[:samples]
    half = WHISPER_N_FFT // 2
    centred = np.pad(padded, half, mode="reflect")  # centred frames, as torch.stft(center=True)
    x = frames(centred, WHISPER_N_FFT, WHISPER_HOP)[:-1]  # the frame past the end is dropped
    window = np.hanning(WHISPER_N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(x * window, axis=1)) ** 2
    log = np.log10(np.maximum(power @ filters, WHISPER_FLOOR)).T
    log = np.maximum(log, log.max() - WHISPER_RANGE)
    return ((log + 4.0) / 4.0).astype(np.float32)
