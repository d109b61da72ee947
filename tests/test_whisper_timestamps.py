"""Whisper timestamps: the numpy timestamp rules token-identical to transformers' ``generate(return_timestamps=True)``,
segments as ``generate`` cuts them, and ``--timestamps`` / ``timestamps=`` / ``verbose_json`` through the runtime.

    .venv/bin/pytest tests/test_whisper_timestamps.py

One tiny random Whisper with the 1,501 timestamp tokens (the registry's whisper-tiny entry in tiny form:
``tiny.tiny_whisper_folder(timestamps=True)``) is exported once for the module, with the registry test's
settings. A random model puts most of its probability on the many timestamp tokens, so its
output exercises every rule (pairs, no going back, the initial limit, timestamps over text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import tiny
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
