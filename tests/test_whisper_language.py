"""A Whisper fine-tuned for one language: generation_config.json's language and task are the artifact's defaults.

    .venv/bin/pytest tests/test_whisper_language.py

Fine-tuning recipes write ``language`` and ``task`` into generation_config.json, and ``generate`` uses them when
called without any. The export records them in the manifest's whisper record; the runtime's prompt takes them
where ``language``/``task`` are not given. No new export: the shared tiny multilingual Whisper
(tests/artifacts.py ``whisper``: en, de, fr) is copied with its record as an export of that generation config
writes it, and compared with ``generate`` of the torch model carrying the same config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.tasks._audio import synthetic_clip

RATE = 16_000
TOKENS = 12

pytestmark = pytest.mark.xdist_group("asr")  # the tiny Whisper export is test_asr.py's, made once per worker


def _record(folder: Path, **settings: Any) -> dict[str, Any]:
    """The manifest's whisper record of the model in ``folder`` with ``settings`` in its generation_config.json."""
    from zoo.folders import read_json
    from zoo.tasks._asr_whisper_export import whisper_record

    generation = {**read_json(folder / "generation_config.json"), **settings}
    return whisper_record(read_json(folder / "config.json"), generation, read_json(folder / "preprocessor_config.json"))


def _with_record(artifact: Path, record: dict[str, Any], out: Path) -> Path:
    import shutil

    shutil.copytree(artifact, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["preprocess"]["whisper"] = record
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _clip() -> np.ndarray:
    return synthetic_clip(2.6, RATE, np.random.default_rng(11))


def test_the_export_records_generation_configs_language_and_task(whisper: tuple[Path, Any]) -> None:
    from zoo.errors import ConfigError

    folder, result = whisper
    assert (result.manifest.preprocess["whisper"]["language"], result.manifest.preprocess["whisper"]["task"]) == \
        (None, None)  # the tiny model's generation config names neither: detected, transcribed
    # as generate reads it: a code, the token, or the language's name
    for given in ("de", "<|de|>", "German"):
        assert _record(folder, language=given, task="translate")["language"] == "de"
    assert _record(folder, task="translate")["task"] == "translate"
    with pytest.raises(ConfigError, match=r"names language 'klingon'; this Whisper model knows: de, en, fr; fix"):
        _record(folder, language="klingon")
    with pytest.raises(ConfigError, match=r"names task 'summarize'; this Whisper model knows: transcribe, translate"):
        _record(folder, task="summarize")


def test_predict_takes_the_recorded_language_and_task_as_generate_does(whisper: tuple[Path, Any],
                                                                       tmp_path: Path) -> None:
    import torch
    import transformers

    import zoo

    folder, result = whisper
    clip = _clip()
    plain = zoo.load(result.path)
    detected = plain.predict(clip, max_new_tokens=TOKENS)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = torch.from_numpy(transformers.WhisperFeatureExtractor.from_pretrained(folder)(
        clip, sampling_rate=RATE, return_tensors="np")["input_features"])
    # a language the model would not detect, so that a runtime ignoring the record answers otherwise
    language = next(code for code in ("fr", "de", "en") if code != detected.language)
    for task in (None, "translate"):
        model.generation_config.language, model.generation_config.task = language, task
        with torch.no_grad():
            want = model.generate(features, max_new_tokens=TOKENS)[0].tolist()
        artifact = _with_record(result.path, _record(folder, language=language, task=task), tmp_path / str(task))
        tuned = zoo.load(artifact, check_hashes=False)
        got = tuned.predict(clip, max_new_tokens=TOKENS)
        assert list(got.token_ids) == [t for t in want if t != model.generation_config.eos_token_id]
        assert got.language == language
        assert got.token_ids != plain.predict(clip, max_new_tokens=TOKENS, task=task).token_ids  # the old default
        # --language and --task still override it
        other = next(code for code in ("en", "de", "fr") if code != language)
        assert tuned.predict(clip, max_new_tokens=TOKENS, language=other, task="transcribe").token_ids == \
            plain.predict(clip, max_new_tokens=TOKENS, language=other, task="transcribe").token_ids


def test_zoo_predict_needs_no_language_flag(whisper: tuple[Path, Any], tmp_path: Path) -> None:
    import soundfile
    from typer.testing import CliRunner

    from zoo.cli.app import app

    folder, result = whisper
    artifact = _with_record(result.path, _record(folder, language="fr"), tmp_path / "tuned")
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, _clip(), RATE, subtype="FLOAT")
    done = CliRunner().invoke(app, ["predict", str(artifact), str(wav), "--json", "--max-new-tokens", str(TOKENS),
                                    "--no-hash-check"])
    assert done.exit_code == 0, done.output
    flagged = CliRunner().invoke(app, ["predict", str(result.path), str(wav), "--json", "--language", "fr",
                                       "--max-new-tokens", str(TOKENS)])
    assert json.loads(done.output) == json.loads(flagged.output)
