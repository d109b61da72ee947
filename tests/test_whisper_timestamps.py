"""Whisper timestamps: the numpy timestamp rules token-identical to transformers' ``generate(return_timestamps=True)``,
segments as ``generate`` cuts them, and ``--timestamps`` / ``timestamps=`` / ``verbose_json`` through the runtime.

    .venv/bin/pytest tests/test_whisper_timestamps.py

One tiny random Whisper with the 1,501 timestamp tokens (the registry's whisper-tiny entry in tiny form:
``tiny.tiny_whisper_folder(timestamps=True)``) is exported once for the module, with the registry test's
settings. A random model puts most of its probability on the many timestamp tokens, so its
output exercises every rule (pairs, no going back, the initial limit, timestamps over text).
Clips past 30 s: the 65 s clip of tests/test_whisper_long.py against ``pipeline(..., chunk_length_s=30,
return_timestamps=True)``, and the windows' join against the pipeline's ``_decode_asr`` on random windows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import tiny
from tests.test_whisper_long import speech_like
from zoo.tasks._audio import synthetic_clip

RATE = 16_000
TOKENS = 24


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> tuple[Path, Any]:
    """(tiny Whisper folder with timestamp tokens, its export result): the registry's ``"whisper-tiny"`` entry in
    tiny form, exported as tests/test_export_registry.py would (one grid seed), which leaves it to this file."""
    import exporters.source
    from exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("whisper-ts")
    spec, model_kwargs, _ = tiny.shrink(registry.get("whisper-tiny"), root / "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporters.source, "SEEDS", (0,))
        result = export_onnx(spec, out=root / "artifact", model_kwargs=model_kwargs)
    return Path(spec.local_path), result


@pytest.fixture(scope="module")
def torch_model(whisper: tuple[Path, Any]) -> Any:
    import transformers

    return transformers.WhisperForConditionalGeneration.from_pretrained(whisper[0]).eval()


def _features(folder: Path, clips: list[np.ndarray]) -> np.ndarray:
    import transformers

    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folder)
    return extractor(clips, sampling_rate=RATE, return_tensors="np")["input_features"].astype(np.float32)


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [synthetic_clip(3.2, RATE, rng), synthetic_clip(1.1, RATE, rng)]


def test_export_verifies_timestamps_against_generate(whisper: tuple[Path, Any]) -> None:
    _, result = whisper
    assert result.report.passed, result.report.summary()
    greedy = {c.name: c for c in result.report.checks}["greedy transcription vs transformers"]
    assert greedy.value == "8/8 identical" and "return_timestamps" in greedy.limit  # 2 clips x 4 prompts
    record = result.manifest.preprocess["whisper"]
    assert record["max_initial_timestamp_index"] == 50 and record["vocab_size"] == record["no_timestamps"] + 1502


def test_timestamp_tokens_and_segments_equal_generate(whisper: tuple[Path, Any], torch_model: Any) -> None:
    """Token ids after the prompt as ``generate(return_timestamps=True)`` greedy gives them, and the segments
    (start, end, tokens) of ``return_segments``; the tokens hold pairs and text, not only timestamps."""
    import torch

    import zoo
    from zoo.tasks._asr_whisper_export import reference_tokens

    folder, result = whisper
    clips = _clips()
    features = _features(folder, clips)
    want = reference_tokens(torch_model, features, TOKENS, language="de", timestamps=True)
    model = zoo.load(result.path)
    got = model.predict(clips, language="de", timestamps=True, max_new_tokens=TOKENS)
    first = result.manifest.preprocess["whisper"]["no_timestamps"] + 1
    eot = result.manifest.preprocess["generation"]["eos_token_ids"][0]
    for row, transcription in zip(want.tolist(), got):
        expected = row[:row.index(eot)] if eot in row else row
        assert list(transcription.token_ids) == expected
        assert expected[0] >= first and any(t < first for t in expected) and sum(t >= first for t in expected) > 2
    with torch.no_grad():
        out = torch_model.generate(torch.from_numpy(features), language="de", return_timestamps=True,
                                   force_unique_generate_call=True, return_segments=True, max_new_tokens=TOKENS)
    for theirs, ours in zip(out["segments"], got):
        expected = [(round(float(s["start"]), 2), round(float(s["end"]), 2), s["tokens"].tolist()) for s in theirs]
        mine = [(round(s.start, 2), round(s.end, 2), list(s.token_ids)) for s in ours.segments]
        assert len(expected) >= 2 and mine[:len(expected)] == expected
    assert got[0].language == "de" and "<|" not in got[0].text


def test_a_timestamp_rule_left_out_is_caught(whisper: tuple[Path, Any], torch_model: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted fault: timestamps no longer forced to come in pairs; the export's greedy check sees it."""
    import onnxruntime as ort
    import transformers

    from zoo.tasks import _asr_whisper_export as export
    from zoo.tasks import _whisper_timestamps as stamps

    folder, result = whisper
    sessions = {name: ort.InferenceSession(str(result.path / file), providers=["CPUExecutionProvider"])
                for name, file in (("model", "model.onnx"), ("encoder", "encoder.onnx"))}
    cases = export.encoder_grid(transformers.WhisperFeatureExtractor.from_pretrained(folder), (0,))[:1]
    record = {"generation": result.manifest.preprocess["generation"], "whisper": result.manifest.preprocess["whisper"]}
    assert export.greedy_check(torch_model, record, sessions, cases).passed
    honest = stamps.TimestampRules.apply

    def unpaired(self: stamps.TimestampRules, scores: np.ndarray, sequences: np.ndarray) -> np.ndarray:
        keep = scores.copy()
        honest(self, scores, sequences)
        if sequences.shape[1] > self.begin_index:  # after the first token, the pair rules' masks undone
            scores[:, self.first:] = keep[:, self.first:]
        return scores

    monkeypatch.setattr(stamps.TimestampRules, "apply", unpaired)
    check = export.greedy_check(torch_model, record, sessions, cases)
    assert not check.passed and "timestamps row" in check.detail


def test_split_follows_generate_on_endings() -> None:
    from zoo.tasks._whisper_timestamps import split

    first = 100
    # a lone timestamp at the end closes the last segment; text after a last pair is its own open segment
    assert split([100, 5, 150, 150, 6, 200], first, 9.0) == [(0.0, 1.0, [100, 5, 150]), (1.0, 2.0, [150, 6, 200])]
    assert split([100, 5, 150, 150, 6], first, 9.0) == [(0.0, 1.0, [100, 5, 150, 150]), (1.0, 9.0, [6])]
    # no pair: one segment, to its last timestamp past 0, else to the clip's end
    assert split([110, 5, 6], first, 4.5) == [(0.0, 0.2, [110, 5, 6])]
    assert split([100, 5, 6], first, 4.5) == [(0.0, 4.5, [100, 5, 6])]


def test_predict_cli_and_serving_give_segments(whisper: tuple[Path, Any], tmp_path: Path) -> None:
    import soundfile
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import zoo
    from zoo.cli.app import app

    _, result = whisper
    clip = _clips()[0]
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clip, RATE, subtype="FLOAT")
    expected = zoo.load(result.path).predict(wav, timestamps=True, language="fr")
    done = CliRunner().invoke(app, ["predict", str(result.path), str(wav), "--timestamps", "--language", "fr",
                                    "--json"])
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.output)
    assert row["segments"] == [s.to_dict() for s in expected.segments] and len(row["segments"]) >= 2
    table = CliRunner().invoke(app, ["predict", str(result.path), str(wav), "--timestamps", "--language", "fr"])
    assert f"[{expected.segments[0].start:.2f} -> {expected.segments[0].end:.2f}]" in table.output
    with TestClient(_app(result.path)) as client:
        _serve_checks(client, wav, expected, row)


def _serve_checks(client: Any, wav: Path, expected: Any, row: dict[str, Any]) -> None:
    audio = {"file": ("clip.wav", wav.read_bytes(), "audio/wav")}
    answer = client.post("/v1/audio/transcriptions", files=audio,
                         data={"model": "w", "language": "fr", "response_format": "verbose_json",
                               "timestamp_granularities[]": "segment"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"] == expected.text and body["language"] == "fr"
    assert [(s["start"], s["end"], s["text"], s["tokens"]) for s in body["segments"]] == [
        (round(s.start, 2), round(s.end, 2), s.text, list(s.token_ids)) for s in expected.segments]
    word = client.post("/v1/audio/transcriptions", files=audio,
                       data={"model": "w", "response_format": "verbose_json", "timestamp_granularities[]": "word"})
    assert word.status_code == 400 and "timestamp_granularities 'word' is not supported" in word.text
    plain = client.post("/v1/audio/transcriptions", files=audio,
                        data={"model": "w", "timestamp_granularities[]": "segment"})
    assert plain.status_code == 400 and "needs response_format verbose_json" in plain.text
    predicted = client.post("/v1/models/w/predict?timestamps=true&language=fr", files=[("files", audio["file"])])
    assert predicted.status_code == 200 and predicted.json()[0]["segments"] == row["segments"]


def _app(artifact: Path) -> Any:
    from zoo.serve import ServeSettings, create_app, load_models

    settings = ServeSettings(max_wait_ms=2)
    return create_app(load_models([f"w={artifact}"], settings), settings)


def test_timestamps_on_a_model_without_them_is_one_clear_error(whisper: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    import zoo
    from zoo.errors import InputError

    _, result = whisper
    clip = _clips()[1]
    with pytest.raises(InputError, match=r"^timestamps='yes'; give true or false$"):
        zoo.load(result.path).predict(clip, timestamps="yes")
    copy = tmp_path / "artifact"
    shutil.copytree(result.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    record = manifest["preprocess"]["whisper"]
    record["vocab_size"] = record["no_timestamps"] + 1  # a vocabulary that ends at <|notimestamps|>
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as caught:
        zoo.load(copy, check_hashes=False).predict(clip, timestamps=True)
    assert "has no timestamp tokens" in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- clips past 30 s


@pytest.fixture(scope="module")
def long_segments(whisper: tuple[Path, Any]) -> dict[str, Any]:
    """The pipeline's answer for the 65 s clip with timestamps: 30 s windows, greedy as zoo (the pipeline's default
    is 5 beams), each window decoded once (``force_unique_generate_call``, as zoo: see ``reference_tokens``)."""
    import torch
    import transformers

    pipe = transformers.pipeline("automatic-speech-recognition", model=str(whisper[0]), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small decodes ~5x faster on one thread of a busy machine
    try:
        return pipe(speech_like(), chunk_length_s=30, return_timestamps=True,
                    generate_kwargs={"max_new_tokens": TOKENS, "num_beams": 1, "force_unique_generate_call": True,
                                     "language": "de"})
    finally:
        torch.set_num_threads(threads)


def _long_differences(artifact: Path, expected: dict[str, Any]) -> list[str]:
    """Where zoo's segments of the 65 s clip differ from the pipeline's (its last end, None: zoo's is the clip's)."""
    import zoo

    got = zoo.load(artifact).predict(speech_like(), timestamps=True, language="de", max_new_tokens=TOKENS)
    want = [(c["timestamp"][0], c["timestamp"][1], c["text"]) for c in expected["chunks"]]
    mine = [(round(s.start, 2), round(s.end, 2), s.text) for s in got.segments]
    if want and want[-1][1] is None:
        want[-1] = (want[-1][0], round(max(got.seconds, want[-1][0]), 2), want[-1][2])
    differ = [f"segment {i}: {m} vs {w}" for i, (m, w) in enumerate(zip(mine, want)) if m != w]
    if len(mine) != len(want):
        differ.append(f"{len(mine)} segments vs {len(want)}")
    if got.text != expected["text"] or got.chunks != 3:
        differ.append(f"text {got.text!r} vs {expected['text']!r}, {got.chunks} windows")
    return differ


def test_segments_of_a_65_s_clip_equal_the_pipelines(whisper: tuple[Path, Any], long_segments: dict[str, Any],
                                                     tmp_path: Path) -> None:
    import soundfile
    from fastapi.testclient import TestClient

    assert _long_differences(whisper[1].path, long_segments) == []
    starts = [c["timestamp"][0] for c in long_segments["chunks"]]
    # segments in the last window (40-65 s), so its offset counts; text gathered over several windows
    assert len(starts) >= 3 and max(starts) > 40 and long_segments["chunks"][0]["timestamp"][1] > 30
    # the task endpoint gives them too (OpenAI's verbose_json runs the same predict, with the model's token limit)
    wav = tmp_path / "long.wav"
    soundfile.write(wav, speech_like(), RATE, subtype="FLOAT")
    with TestClient(_app(whisper[1].path)) as client:
        answer = client.post(f"/v1/models/w/predict?timestamps=true&language=de&max_new_tokens={TOKENS}",
                             files=[("files", ("long.wav", wav.read_bytes(), "audio/wav"))])
    assert answer.status_code == 200, answer.text
    [body] = answer.json()
    assert body["text"] == long_segments["text"] and body["chunks"] == 3
    assert [(s["start"], s["text"]) for s in body["segments"]] == [(c["timestamp"][0], c["text"])
                                                                   for c in long_segments["chunks"]]


@pytest.mark.parametrize("fault", ["offset", "overlap"])
def test_a_long_clip_join_fault_is_caught(whisper: tuple[Path, Any], long_segments: dict[str, Any], fault: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted faults: each window's timestamps read as if it began the clip; windows' text put one after the other,
    their shared stretch kept twice."""
    from zoo.tasks import _whisper_long as long

    _plant(monkeypatch, long, fault)
    assert _long_differences(whisper[1].path, long_segments)


def _plant(monkeypatch: pytest.MonkeyPatch, long: Any, fault: str) -> None:
    if fault == "offset":
        monkeypatch.setattr(long, "_seconds", lambda token, first, place: round((token - first) * 0.02, 2))
    elif fault == "overlap":
        monkeypatch.setattr(long, "join", lambda sequences: [t for s in sequences for t in s])
    else:  # the right stride's timestamps trusted to close segments
        monkeypatch.setattr(long, "_held_from", lambda tokens, place, first: None)


def _random_windows(rng: np.random.Generator, first: int, seconds: float) -> tuple[list[list[int]], list[Any]]:
    """A clip's 30 s windows as zoo places them, each with rising timestamps (repeats, lone ones, pairs; some in the
    strides) among text from a few tokens, so that neighbouring windows share stretches."""
    from zoo.tasks._asr_ctc import chunk_clip
    from zoo.tasks._whisper_long import Window

    places = [Window(*(n / RATE for n in (c.start, c.length, c.left, c.right)))
              for c in chunk_clip(0, int(seconds * RATE), 30 * RATE, 5 * RATE, 5 * RATE)]
    windows = []
    for place in places:
        stamps = sorted(rng.integers(0, int(place.length / 0.02) + 1, rng.integers(0, 10)).tolist())
        tokens: list[int] = []
        for stamp in [*stamps, None]:
            tokens += rng.integers(70, 74, rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])).tolist()
            if stamp is not None:
                tokens.append(first + stamp)
        windows.append(tokens)
    return windows, places


def _decode_asr_differences(folder: Path, cases: int = 150) -> list[str]:
    import transformers

    from zoo.tasks import _whisper_long as long

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    first = tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    rng = np.random.default_rng(0)
    differ = []
    for case in range(cases):
        windows, places = _random_windows(rng, first, float(rng.choice([31.0, 47.5, 65.0, 100.0])))
        outputs = [{"tokens": np.array([w]), "stride": (p.length, p.left, p.right)} for w, p in zip(windows, places)]
        _, theirs = tokenizer._decode_asr(outputs, return_timestamps=True, return_language=False,
                                          time_precision=0.02)
        want = [(*c["timestamp"], c["text"]) for c in theirs["chunks"]]
        mine = [(s.start, s.end, tokenizer.decode(s.tokens)) for s in long.timed_join(windows, places, first)]
        if mine != want:
            differ.append(f"case {case}: {mine} vs {want}")
    return differ


def test_timed_join_follows_the_pipelines_decode_asr(whisper: tuple[Path, Any]) -> None:
    """Segments (start, end or None, text) of random windows as the pipeline's Whisper decoding gives them."""
    assert _decode_asr_differences(whisper[0]) == []


@pytest.mark.parametrize("fault", ["offset", "overlap", "stride"])
def test_a_timed_join_fault_is_caught_on_random_windows(whisper: tuple[Path, Any], fault: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.tasks import _whisper_long as long

    _plant(monkeypatch, long, fault)
    assert _decode_asr_differences(whisper[0])
