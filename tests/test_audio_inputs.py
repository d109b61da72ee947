"""Audio clips as users hand them over, good and bad: one clear line each, or handled as users expect.

    .venv/bin/pytest tests/test_audio_inputs.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from zoo.errors import ConfigError, DataError, InputError
from zoo.tasks._audio import AudioPreprocessor, AudioSettings

RATE = 16_000
WAVEFORM = AudioSettings(features="waveform", sampling_rate=RATE, do_normalize=True, attention_mask=True,
                         max_seconds=30.0)
FBANK = AudioSettings(features="fbank", sampling_rate=RATE, do_normalize=True, attention_mask=False,
                      num_mel_bins=64, max_frames=1024, mean=-4.2677393, std=4.5689974)


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else mono


def _wav(folder: Path, name: str, samples: np.ndarray, rate: int = RATE, subtype: str | None = None) -> Path:
    path = folder / name
    soundfile.write(path, samples, rate, subtype=subtype)
    return path


def _text_file(path: Path) -> Path:
    path.write_text("not audio at all")
    return path


# ---------------------------------------------------------------- handled as users expect


def test_a_stereo_44k_file_is_mixed_and_resampled(tmp_path: Path) -> None:
    path = _wav(tmp_path, "stereo.wav", _tone(1.0, 44_100, channels=2), 44_100)
    clip, seconds = WAVEFORM.load(path, "input 0")
    assert seconds == pytest.approx(1.0) and len(clip) == pytest.approx(RATE, abs=2)
    spectrum = np.abs(np.fft.rfft(clip))
    assert abs(int(spectrum.argmax()) * RATE / len(clip) - 440) < 2  # still a 440 Hz tone after soxr


def test_six_channels_are_averaged(tmp_path: Path) -> None:
    samples = _tone(0.5, channels=6)
    clip, _ = WAVEFORM.load(_wav(tmp_path, "six.wav", samples, subtype="FLOAT"), "input 0")
    assert np.allclose(clip, samples.mean(axis=1), atol=1e-6)


def test_eight_bit_pcm_reads_like_its_sixteen_bit_twin(tmp_path: Path) -> None:
    samples = _tone(0.5)
    eight, _ = WAVEFORM.load(_wav(tmp_path, "u8.wav", samples, subtype="PCM_U8"), "input 0")
    sixteen, _ = WAVEFORM.load(_wav(tmp_path, "s16.wav", samples, subtype="PCM_16"), "input 0")
    assert np.abs(eight - sixteen).max() < 2 / 128  # one 8-bit step


def test_silence_is_a_valid_clip(tmp_path: Path) -> None:
    batch = AudioPreprocessor.from_settings(FBANK)([_wav(tmp_path, "silent.wav", np.zeros(RATE))])
    assert np.isfinite(batch.arrays["input_values"]).all()


def test_ten_minutes_are_truncated_as_the_feature_extractor_truncates(tmp_path: Path) -> None:
    """Only the model's window is read (about 10.3 s for AST); the features equal those of that prefix."""
    rng = np.random.default_rng(0)
    long = (0.1 * rng.standard_normal(600 * RATE)).astype(np.float32)
    path = _wav(tmp_path, "ten-minutes.wav", long, subtype="FLOAT")
    batch = AudioPreprocessor.from_settings(FBANK)([path])
    assert batch.durations == [pytest.approx(600.0)]
    prefix = FBANK.clip_features(long[:FBANK.max_samples])
    assert np.array_equal(batch.arrays["input_values"][0], prefix)
    clip, _ = WAVEFORM.load(path, "input 0")
    assert len(clip) == 30 * RATE  # waveform models keep max_seconds (30 s)


def test_arrays_and_dicts_are_clips_too() -> None:
    pre = AudioPreprocessor.from_settings(WAVEFORM)
    batch = pre([_tone(1.0).astype(np.float32), {"array": _tone(0.5, 8000), "sampling_rate": 8000}])
    assert batch.arrays["input_values"].shape == (2, RATE)
    assert batch.arrays["attention_mask"].sum(axis=1).tolist() == [RATE, RATE // 2]


# ---------------------------------------------------------------- one clear line each


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _wav(d, "empty.wav", np.zeros(0)), "holds no samples"),
    (lambda d: _wav(d, "one-ms.wav", _tone(0.001)), "is 1.0 ms long; this model needs at least 25 ms"),
    (lambda d: _wav(d, "one-hz.wav", _tone(1.0, 1000)[:5], 1), "is sampled at 1 Hz; zoo resamples (soxr) from 1000"),
    (lambda d: _wav(d, "ghz.wav", _tone(0.01), 2_000_000), "is sampled at 2000000 Hz"),
    (lambda d: _text_file(d / "notes.wav"), "is not audio that soundfile can read"),
    (lambda d: d / "missing.wav", "no such audio file"),
    (lambda d: np.zeros((3, 3, 3), np.float32), "give float samples in [-1, 1]"),
    (lambda d: np.arange(100), "dtype int64"),
    (lambda d: {"array": _tone(1.0)}, "'sampling_rate' is None"),
    (lambda d: np.full(RATE, np.nan, np.float32), "NaN or infinite samples"),
])
def test_bad_clips_are_one_input_error(make, message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        AudioPreprocessor.from_settings(WAVEFORM)([make(tmp_path)])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("input 0")


def test_a_missing_audio_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(ConfigError, match=r"pip install 'zoo-toolkit\[audio\]'"):
        WAVEFORM.load(_wav(tmp_path, "a.wav", _tone(0.5)), "input 0")


# ---------------------------------------------------------------- training layouts


def _audiofolder(root: Path, labels: dict[str, int]) -> Path:
    for label, count in labels.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            _wav(root / label, f"{i}.wav", _tone(0.3 + 0.1 * i))
    return root


def test_audiofolder_reads_one_folder_per_label(tmp_path: Path) -> None:
    from zoo.tasks._audio_data import read_audio_data

    splits = read_audio_data(str(_audiofolder(tmp_path / "clips", {"no": 2, "yes": 3})))
    table = splits["train"]
    assert table.features["label"].names == ["no", "yes"] and len(table) == 5
    assert all(Path(p).is_file() for p in table["audio"])


def test_audiofolder_with_one_class_is_refused(tmp_path: Path) -> None:
    from zoo.tasks._audio_data import read_audio_data

    with pytest.raises(DataError, match="has 1 class folder.*yes.*needs at least 2"):
        read_audio_data(str(_audiofolder(tmp_path / "clips", {"yes": 3})))


def test_an_empty_class_folder_is_named(tmp_path: Path) -> None:
    from zoo.tasks._audio_data import read_audio_data

    root = _audiofolder(tmp_path / "clips", {"no": 2, "yes": 2})
    (root / "maybe").mkdir()
    with pytest.raises(DataError, match=r"class folder '.*maybe' holds no audio clips"):
        read_audio_data(str(root))


def test_csv_paths_are_relative_to_the_csv(tmp_path: Path) -> None:
    from zoo.tasks._audio_data import read_audio_data

    (tmp_path / "wav").mkdir()
    for name in ("a", "b"):
        _wav(tmp_path / "wav", f"{name}.wav", _tone(0.5))
    (tmp_path / "list.csv").write_text("path,label\nwav/a.wav,up\nwav/b.wav,down\n")
    table = read_audio_data(str(tmp_path / "list.csv"))["train"]
    assert table["path"] == [str(tmp_path / "wav" / "a.wav"), str(tmp_path / "wav" / "b.wav")]
    assert table["label"] == ["up", "down"]


def test_a_bad_row_in_training_data_is_named(tmp_path: Path) -> None:
    from zoo.tasks._audio_data import encode_clips, read_audio_data

    root = _audiofolder(tmp_path / "clips", {"no": 1, "yes": 1})
    (root / "yes" / "broken.wav").write_text("not audio")
    table = read_audio_data(str(root))["train"]
    with pytest.raises(DataError, match="row 2 of train is not audio that soundfile can read"):
        encode_clips(table, {"input": "audio", "label": "label"}, ("no", "yes"), WAVEFORM, "train")


def test_builtin_tones_are_deterministic_and_balanced() -> None:
    from zoo.tasks._audio_data import TONE_CLASSES, tones

    first, digest = tones()
    again, digest_again = tones()
    assert digest == digest_again
    table = first["train"]
    assert table.features["label"].names == list(TONE_CLASSES)
    assert np.bincount(table["label"]).tolist() == [len(table) // len(TONE_CLASSES)] * len(TONE_CLASSES)
    assert table[0]["audio"]["array"] == again["train"][0]["audio"]["array"]


# ---------------------------------------------------------------- the CLI


def test_predict_errors_are_one_line(ast_artifact: Path, tmp_path: Path) -> None:
    bad = _wav(tmp_path, "one-ms.wav", _tone(0.001))
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", str(ast_artifact), str(bad)],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: input 0") and "ms long" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_clip_longer_than_the_window_says_so(ast_artifact: Path, tmp_path: Path) -> None:
    import zoo

    model = zoo.load(ast_artifact)
    long, short = _wav(tmp_path, "long.wav", _tone(4.0)), _wav(tmp_path, "short.wav", _tone(0.5))
    cut, whole = model.predict([str(long), str(short)])
    assert cut.seconds == pytest.approx(4.0) and "model hears its first 1.29 s" in cut.to_dict()["note"]
    assert whole.note is None and "note" not in whole.to_dict()


@pytest.mark.parametrize(("classes", "empty", "message"), [
    ({"yes": 2}, False, "has 1 class folder(s) (yes); classification needs at least 2"),
    ({"no": 1, "yes": 1}, True, "holds no audio clips"),
])
def test_finetune_on_a_bad_audiofolder_is_one_line(classes: dict[str, int], empty: bool, message: str,
                                                   ast_folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    root = _audiofolder(tmp_path / "clips", classes)
    if empty:
        (root / "maybe").mkdir()
    with pytest.raises(SystemExit) as done:
        main(["finetune", str(ast_folder), "--data", str(root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({}, None),  # the twin: a sound record is accepted
    ({"max_frames": 10**9}, "max_frames is 1000000000, an fbank model needs an integer from 1 to"),
    ({"sampling_rate": 2_000_000}, "sampling_rate is 2000000"),
    ({"num_mel_bins": True}, "num_mel_bins is True"),
    ({"mean": [float("nan")]}, "do_normalize needs mean and std"),
])
def test_a_manifest_cannot_make_the_runtime_allocate_without_bound(change: dict, message: str | None) -> None:
    from zoo.errors import ArtifactError

    record = {**FBANK.record(), **change}
    if message is None:
        assert AudioSettings.from_record(record, ["input_values"], ArtifactError) == FBANK
        return
    with pytest.raises(ArtifactError, match="re-export the model") as info:
        AudioSettings.from_record(record, ["input_values"], ArtifactError)
    assert message in str(info.value)


def test_a_waveform_window_past_an_hour_is_refused() -> None:
    record = {**WAVEFORM.record(), "max_seconds": 1e9}
    with pytest.raises(ConfigError, match=r"max_seconds is 1000000000.0, give a number of seconds in \(0, 3600\]"):
        AudioSettings.from_record(record, ["input_values", "attention_mask"])
    assert AudioSettings.from_record(WAVEFORM.record(), ["input_values", "attention_mask"]) == WAVEFORM


def test_zoo_predict_prints_the_truncation_note_under_its_table(ast_artifact: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zoo.cli.app import app

    long, short = _wav(tmp_path, "long.wav", _tone(4.0)), _wav(tmp_path, "short.wav", _tone(0.5))
    done = CliRunner().invoke(app, ["predict", str(ast_artifact), str(long), str(short)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())  # the caption wraps to the table's width
    assert text.count("model hears its first 1.29 s") == 1 and "long.wav: clip is 4.00 s;" in text
    assert "short.wav: clip" not in text
