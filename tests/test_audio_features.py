"""The runtime's numpy audio features against transformers' own feature extractors, on real-length clips.

    .venv/bin/pytest tests/test_audio_features.py

Measured on this machine (numpy 2.4, transformers 5.24, whose ASTFeatureExtractor takes its
numpy path here because torchaudio is not installed):
- AST log-mel filterbank, 10.5 s clip, 128 bins x 1024 frames, normalised: max abs 1.2e-7
- wav2vec2 normalisation, 1 s and 2.5 s clips, padded batch with attention mask: max abs 2.4e-7
Each parity test has a twin that plants a fault (Slaney's mel scale instead of Kaldi's, normalisation
left out, a doubled std) and sees the difference exceed the 1e-4 goal by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

from zoo.tasks import _audio_features as feats
from zoo.tasks._audio import AudioSettings, feature_parity_check, reference_features
from zoo.tasks.base import Case

GOAL = 1e-4  # max abs difference on normalised features
RATE = 16_000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Harmonics with a moving pitch, syllable-like bursts and noise: a real-length, non-stationary clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None)
    return (0.4 * voice * syllables + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


AST = AudioSettings(features="fbank", sampling_rate=RATE, do_normalize=True, attention_mask=False,
                    num_mel_bins=128, max_frames=1024, mean=-4.2677393, std=4.5689974)
WAV2VEC2_MASKED = AudioSettings(features="waveform", sampling_rate=RATE, do_normalize=True, attention_mask=True,
                                max_seconds=30.0)


def _ast_difference(clip: np.ndarray) -> float:
    from transformers import ASTFeatureExtractor

    expected = ASTFeatureExtractor()(clip, sampling_rate=RATE, return_tensors="np")["input_values"][0]
    got = AST.clip_features(clip)
    assert got.shape == expected.shape == (1024, 128)
    return float(np.abs(got - expected).max())


def _wav2vec2_difference(clips: list[np.ndarray]) -> float:
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    expected = extractor(clips, sampling_rate=RATE, padding=True, return_tensors="np")
    got = WAV2VEC2_MASKED.collate([WAV2VEC2_MASKED.clip_features(c) for c in clips])
    assert np.array_equal(got["attention_mask"], expected["attention_mask"])
    return float(np.abs(got["input_values"] - expected["input_values"]).max())


@pytest.mark.parametrize("seconds", [10.5, 3.0])  # truncated to 1024 frames, and zero-padded to them
def test_ast_fbank_matches_transformers(seconds: float) -> None:
    assert _ast_difference(_speechlike(seconds, seed=1)) <= GOAL  # measured 1.2e-7


def _slaney_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz < 1000, 3 * hz / 200, 15 + np.log(np.maximum(hz, 1e-9) / 1000) * 27 / np.log(6.4))


def test_ast_fbank_with_another_mel_scale_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin: Slaney's mel scale in place of Kaldi's 1127 ln(1 + f/700) moves every triangle.

    (HTK's 2595 log10(1 + f/700) is Kaldi's scale times 1.00001, so it could not be told apart.)
    """
    monkeypatch.setattr(feats, "kaldi_mel", _slaney_mel)
    assert _ast_difference(_speechlike(10.5, seed=1)) > 100 * GOAL


def test_ast_fbank_without_normalisation_fails_parity() -> None:
    import dataclasses

    from transformers import ASTFeatureExtractor

    clip = _speechlike(10.5, seed=1)
    expected = ASTFeatureExtractor()(clip, sampling_rate=RATE, return_tensors="np")["input_values"][0]
    raw = dataclasses.replace(AST, do_normalize=False).clip_features(clip)
    assert float(np.abs(raw - expected).max()) > 100 * GOAL


def test_silence_is_finite_and_matches() -> None:
    silent = np.zeros(RATE, np.float32)
    assert _ast_difference(silent) <= GOAL
    assert np.isfinite(AST.clip_features(silent)).all()
    assert not WAV2VEC2_MASKED.clip_features(silent).any()  # zero variance normalises to zeros, not NaN


def test_wav2vec2_normalisation_matches_transformers() -> None:
    clips = [_speechlike(1.0, seed=2), _speechlike(2.5, seed=3)]
    assert _wav2vec2_difference(clips) <= GOAL  # measured 2.4e-7


def test_wav2vec2_without_normalisation_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feats, "normalize_waveform", lambda clip: clip.astype(np.float32))
    assert _wav2vec2_difference([_speechlike(1.0, seed=2), _speechlike(2.5, seed=3)]) > 100 * GOAL


def test_unmasked_clips_are_normalised_each_on_its_own() -> None:
    """Without a mask, transformers normalises a padded batch over its padding too; zoo does not.

    The runtime normalises each clip over its own samples (what transformers gives for the clip
    alone), so a clip's input never depends on the other clips of its batch.
    """
    from transformers import Wav2Vec2FeatureExtractor

    short, long = _speechlike(1.0, seed=4), _speechlike(2.5, seed=5)
    settings = AudioSettings(features="waveform", sampling_rate=RATE, do_normalize=True, attention_mask=False)
    extractor = Wav2Vec2FeatureExtractor(return_attention_mask=False)
    alone = extractor(short, sampling_rate=RATE, return_tensors="np")["input_values"][0]
    in_batch = settings.collate([settings.clip_features(c) for c in (short, long)])["input_values"][0]
    assert float(np.abs(in_batch[:len(short)] - alone).max()) <= GOAL
    padded_by_hf = extractor([short, long], sampling_rate=RATE, padding=True, return_tensors="np")["input_values"][0]
    assert float(np.abs(padded_by_hf[:len(short)] - alone).max()) > 0.1  # the behaviour zoo avoids


def test_export_check_catches_features_that_drift() -> None:
    """The export-time check (runtime features vs the feature extractor) passes, and fails on a wrong record."""
    from transformers import ASTFeatureExtractor

    processor = ASTFeatureExtractor()
    clips = [_speechlike(2.0, seed=6), _speechlike(11.0, seed=7)]
    case = Case("long", 0, reference_features(processor, AST, clips), raw=clips)
    good = feature_parity_check(AST.record(), [case])
    assert good.passed, good
    drifted = feature_parity_check({**AST.record(), "std": [2 * AST.std]}, [case])
    assert not drifted.passed and "differs by" in drifted.detail


# ---------------------------------------------------------------- Whisper log-mel (automatic-speech-recognition)

WHISPER_GOAL = 1e-4  # transformers' extractor runs torch.stft in float32 here; numpy works in float64


def _whisper_reference(clip: np.ndarray, bins: int = 80) -> np.ndarray:
    import transformers

    extractor = transformers.WhisperFeatureExtractor(feature_size=bins)
    return extractor(clip, sampling_rate=RATE, return_tensors="np")["input_features"][0]


@pytest.mark.parametrize(("seconds", "bins"), [(3.7, 80), (30.0, 80), (41.3, 128)])
def test_whisper_log_mel_matches_transformers(seconds: float, bins: int) -> None:
    """Padded to 30 s, exactly 30 s, and cut from a longer clip (large-v3's 128 bins)."""
    clip = _speechlike(seconds, 3)
    got = feats.whisper_features(clip, RATE, feats.whisper_mel_filters(bins, RATE))
    expected = _whisper_reference(clip, bins)
    assert got.shape == expected.shape == (bins, 3000)
    assert float(np.abs(got - expected).max()) <= WHISPER_GOAL


def test_whisper_filterbank_equals_transformers_mel_filters() -> None:
    import transformers

    assert np.allclose(feats.whisper_mel_filters(80, RATE), transformers.WhisperFeatureExtractor().mel_filters,
                       rtol=0, atol=1e-12)


def test_whisper_filterbank_off_by_one_bin_fails_parity() -> None:
    """Planted fault: every triangle moved up one frequency bin."""
    clip = _speechlike(3.7, 3)
    shifted = np.roll(feats.whisper_mel_filters(80, RATE), 1, axis=0)
    assert float(np.abs(feats.whisper_features(clip, RATE, shifted) - _whisper_reference(clip)).max()) > 100 * \
        WHISPER_GOAL
