"""Speech recognition: CTC heads exported, verified and transcribing like transformers' own pipeline.

    .venv/bin/pytest tests/test_asr.py

One tiny HuBERT CTC model (layer-normalised convolutions, so it takes an attention
mask and padded chunks are exact) is exported once for the module; its
transcripts are compared with ``transformers.pipeline("automatic-speech-recognition")``
on the torch model, whole and in overlapping chunks. wav2vec2 CTC exports in
tests/test_export_registry.py (the ``wav2vec2-960h`` entry).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from tests import tiny
from zoo.tasks import _asr_ctc as ctc
from zoo.tasks._audio import synthetic_clip

pytestmark = pytest.mark.xdist_group("asr")  # one worker: the module's shared launch/export runs once

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000


@pytest.fixture(scope="module")
def hubert(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> tuple[Path, Any]:
    """(tiny HuBERT CTC folder, its export result).

    One grid seed, a 4 s window (the grid's long case is then 4.5 s, not 30.5) and the plain graph keep the
    export to seconds; the registry test exports the entry as it is.
    """
    import dataclasses

    import exporters.source
    from exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("asr-hubert")
    spec, model_kwargs, _ = tiny.shrink(registry.get("hubert-large-960h"), root / "model")
    spec = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, max_seconds=4.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporters.source, "SEEDS", (0,))
        result = export_onnx(spec, out=root / "artifact", model_kwargs=model_kwargs, fuse=False)
    return Path(spec.local_path), result


@pytest.fixture(scope="module")
def pipeline(hubert: tuple[Path, Any]) -> Any:
    import transformers

    folder, _ = hubert
    return transformers.pipeline("automatic-speech-recognition", model=str(folder), device="cpu")


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Voiced segments with pauses: a random CTC model emits varied tokens, blanks and repeats on it."""
    rng = np.random.default_rng(seed)
    parts = [np.concatenate([synthetic_clip(rng.uniform(0.3, 0.9), RATE, rng), np.zeros(int(rng.uniform(0.05, 0.3)
                                                                                          * RATE), np.float32)])
             for _ in range(int(seconds * 2))]
    return np.concatenate(parts)[:int(seconds * RATE)]


def test_ctc_export_verifies_logits_features_and_decoding(hubert: tuple[Path, Any]) -> None:
    _, result = hubert
    assert result.report.passed, result.report.summary()
    checks = {c.name: c for c in result.report.checks}
    assert checks["top-1 agreement"].passed and checks["output logits"].passed
    assert checks["numpy features reproduce Wav2Vec2FeatureExtractor"].passed
    decoding = checks["numpy CTC decoding reproduces the tokenizer's batch_decode"]
    assert decoding.passed and decoding.value.endswith("rows") and "64 random rows" in decoding.detail
    record = result.manifest.preprocess
    assert record["ctc"]["tokens"] == list(tiny.CTC_VOCAB) and record["ctc"]["blank"] == 0
    assert record["ctc"]["delimiter"] == tiny.CTC_VOCAB.index("|") and math.prod(record["conv_stride"]) == 320
    assert "vocab.json" in record["files"]


def test_a_collapse_that_keeps_blanks_is_caught(hubert: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted fault: runs collapsed but blanks kept, so '<pad>' shows in the text."""
    from zoo.tasks.automatic_speech_recognition import ctc_decode_check

    _, result = hubert
    record = result.manifest.preprocess

    def keeps_blanks(self: ctc.CtcVocab, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids).reshape(-1)
        return ids[np.concatenate([[True], ids[1:] != ids[:-1]])] if ids.size else ids

    assert ctc_decode_check(result.path, record, []).passed
    monkeypatch.setattr(ctc.CtcVocab, "collapse", keeps_blanks)
    check = ctc_decode_check(result.path, record, [])
    assert not check.passed and "<pad>" in check.detail


def test_transcripts_equal_the_pipeline_on_whole_clips(hubert: tuple[Path, Any], pipeline: Any) -> None:
    import zoo

    _, result = hubert
    model = zoo.load(result.path)
    clips = [_speechlike(seconds, seed) for seed, seconds in enumerate((1.3, 3.7, 0.6))]
    got = model.predict(clips)
    expected = [pipeline(clip.copy())["text"] for clip in clips]
    assert [r.text for r in got] == expected
    assert all(r.chunks == 1 for r in got) and len({r.text for r in got}) == 3 and all(expected)


def test_chunked_transcripts_equal_the_pipeline_with_chunk_length_and_stride(hubert: tuple[Path, Any],
                                                                            pipeline: Any) -> None:
    """A 7 s clip in 2 s windows with 0.4 s of context each side: 6 chunks, stitched as the pipeline does."""
    import zoo
    from zoo.tasks.automatic_speech_recognition import AsrPreprocessor

    _, result = hubert
    model = zoo.load(result.path)
    record = {**result.manifest.preprocess, "chunk_seconds": 2.0, "stride_seconds": 0.4}
    preprocess = AsrPreprocessor.from_record(record, model.input_names)
    clip = _speechlike(7.0, 11)
    batch = preprocess([clip, clip[:RATE]])
    assert [c.clip for c in batch.chunks] == [0] * 6 + [1]
    outputs = model(**batch.arrays)
    manifest = type("M", (), {"preprocess": record})()
    long, short = model._task.postprocess(outputs, batch, None, manifest)
    assert long.chunks == 6 and short.chunks == 1
    assert long.text == pipeline(clip.copy(), chunk_length_s=2.0, stride_length_s=0.4)["text"]
    assert short.text == pipeline(clip[:RATE].copy())["text"]


@pytest.mark.parametrize("samples", [100, 31_999, 32_000, 32_001, 70_000, 112_000, 160_321])
def test_chunk_windows_and_kept_frames_follow_the_pipeline(samples: int) -> None:
    from transformers.pipelines.automatic_speech_recognition import chunk_iter, rescale_stride

    def extractor(chunk: np.ndarray, **_: Any) -> dict[str, Any]:
        return {}

    extractor.sampling_rate = RATE  # type: ignore[attr-defined]
    chunk, left = ctc.aligned(2.0, RATE, 320), ctc.aligned(0.4, RATE, 320)
    expected = [item["stride"] for item in chunk_iter(np.zeros(samples), extractor, chunk, left, left)]
    got = ctc.chunk_clip(0, samples, chunk, left, left)
    assert [(c.length, c.left, c.right) for c in got] == expected
    for c, (frames, cut_left, cut_right) in zip(got, rescale_stride(expected, 1 / 320)):
        assert ctc.kept_frames(c, 320) == slice(cut_left, frames - cut_right)


def test_zoo_predict_prints_the_transcript_without_torch(hubert: tuple[Path, Any], pipeline: Any,
                                                         tmp_path: Path) -> None:
    _, result = hubert
    clip = _speechlike(2.5, 5)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clip, RATE, subtype="FLOAT")
    code = ("import sys; from zoo.cli import main; sys.argv = ['zoo', 'predict', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(result.path), str(wav), "--json"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
    (row,) = json.loads(done.stdout)
    assert row["text"] == pipeline(clip.copy())["text"] and row["seconds"] == pytest.approx(2.5)


def test_a_bad_ctc_record_is_one_clear_artifact_error(hubert: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    import zoo
    from zoo.errors import ArtifactError

    _, result = hubert
    copy = tmp_path / "artifact"
    shutil.copytree(result.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["ctc"]["blank"] = 999
    manifest["preprocess"]["stride_seconds"] = 20.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as caught:
        zoo.load(copy, check_hashes=False)
    message = str(caught.value)
    assert "ctc.blank is 999, give a token id below 32" in message and "\n" not in message


# ---------------------------------------------------------------- Whisper


def _whisper_reference(folder: Path, clip: np.ndarray, **options: Any) -> tuple[list[int], str]:
    import torch
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(folder)(clip, sampling_rate=RATE,
                                                                           return_tensors="pt")["input_features"]
    with torch.no_grad():
        tokens = model.generate(features, max_new_tokens=12, **options)[0].tolist()
    text = transformers.AutoTokenizer.from_pretrained(folder).decode(tokens, skip_special_tokens=True)
    return tokens, text


def test_whisper_exports_two_graphs_verified_together(whisper: tuple[Path, Any]) -> None:
    _, result = whisper
    assert result.report.passed, result.report.summary()
    checks = {c.name: c for c in result.report.checks}
    assert checks["greedy transcription vs transformers"].value == "6/6 identical"  # 2 clips x 3 prompts
    assert checks["decoder steps (own cache)"].passed and checks["next-token agreement"].passed
    assert checks["encoder: numpy log-mel reproduces WhisperFeatureExtractor"].passed
    record = result.manifest.preprocess
    assert record["graphs"]["encoder"]["file"] == "encoder.onnx" and "tokenizer.json" in record["files"]
    assert sorted(record["whisper"]["languages"]) == sorted(tiny.WHISPER_LANGUAGES)


def test_a_prompt_without_its_special_tokens_is_caught(whisper: tuple[Path, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted fault: the decoder prompt cut to the start token (no language, task or no-timestamps token)."""
    import onnxruntime as ort
    import transformers

    from zoo.tasks import _asr_whisper_export as export
    from zoo.tasks._asr_whisper import WhisperGenerator

    folder, result = whisper
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    sessions = {name: ort.InferenceSession(str(result.path / file), providers=["CPUExecutionProvider"])
                for name, file in (("model", "model.onnx"), ("encoder", "encoder.onnx"))}
    processor = transformers.WhisperFeatureExtractor.from_pretrained(folder)
    cases = export.encoder_grid(processor, (0,))[:1]
    record = {"generation": result.manifest.preprocess["generation"], "whisper": result.manifest.preprocess["whisper"]}
    assert export.greedy_check(model, record, sessions, cases).passed
    honest = WhisperGenerator.prompt
    monkeypatch.setattr(WhisperGenerator, "prompt", lambda self, language, task, encoded: honest(
        self, language, task, encoded)[:, :1])
    check = export.greedy_check(model, record, sessions, cases)
    assert not check.passed and "vs" in check.detail


@pytest.mark.parametrize("options", [{}, {"language": "de", "task": "translate"}, {"language": "fr"}])
def test_whisper_transcripts_equal_generate_and_the_tokenizer(whisper: tuple[Path, Any],
                                                              options: dict[str, str]) -> None:
    import zoo

    folder, result = whisper
    clip = _speechlike(3.2, 4)
    tokens, text = _whisper_reference(folder, clip, **options)
    got = zoo.load(result.path).predict(clip, max_new_tokens=12, **options)
    assert got.text == text and got.seconds == pytest.approx(3.2) and tokens


def test_zoo_predict_whisper_flags_and_bad_values(whisper: tuple[Path, Any], hubert: tuple[Path, Any],
                                                  tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zoo.cli.app import app

    folder, result = whisper
    clip = _speechlike(2.0, 8)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clip, RATE, subtype="FLOAT")
    runner = CliRunner()
    done = runner.invoke(app, ["predict", str(result.path), str(wav), "--language", "de", "--task", "translate",
                               "--max-new-tokens", "12", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)[0]["text"] == _whisper_reference(folder, clip, language="de", task="translate")[1]
    done = runner.invoke(app, ["predict", str(result.path), str(wav), "--task", "summarise"])
    assert "task 'summarise': valid: transcribe, translate" in str(done.exception)
    done = runner.invoke(app, ["predict", str(hubert[1].path), str(wav), "--language", "de"])
    assert "these options are for Whisper models" in str(done.exception)
    # through the real entry point: one line on stderr, no traceback
    bad = subprocess.run([sys.executable, "-m", "zoo", "predict", str(result.path), str(wav), "--language", "xx"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: language 'xx' is not one this model knows; valid: de, en, fr"


# ---------------------------------------------------------------- serving (a live zoo serve, no torch in it)


@pytest.fixture(scope="module")
def server(whisper: tuple[Path, Any], hubert: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.serving import live_server

    log = tmp_path_factory.mktemp("asr-serve") / "serve.log"
    with live_server([f"whisper={whisper[1].path}", f"ctc={hubert[1].path}"], log) as live:
        yield live


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("asr-wav") / "spoken.wav"
    soundfile.write(path, _speechlike(2.6, 21), RATE, subtype="PCM_16")
    return path


def test_openai_client_transcribes_with_whisper_and_ctc(server: Any, whisper: tuple[Path, Any],
                                                       hubert: tuple[Path, Any], spoken: Path) -> None:
    openai = pytest.importorskip("openai")
    import zoo

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with spoken.open("rb") as file:
        answer = client.audio.transcriptions.create(model="whisper", file=file, language="de")
    assert answer.text == zoo.load(whisper[1].path).predict(spoken, language="de").text
    with spoken.open("rb") as file:
        text = client.audio.transcriptions.create(model="ctc", file=file, response_format="text")
    assert text.strip() == zoo.load(hubert[1].path).predict(spoken).text
    with spoken.open("rb") as file, pytest.raises(openai.BadRequestError, match="response_format 'srt'"):
        client.audio.transcriptions.create(model="whisper", file=file, response_format="srt")
    with spoken.open("rb") as file, pytest.raises(openai.NotFoundError, match="model 'whisper-9' is not served"):
        client.audio.transcriptions.create(model="whisper-9", file=file)
    with pytest.raises(openai.BadRequestError, match="not audio that soundfile can read"):
        client.audio.transcriptions.create(model="ctc", file=("notes.wav", b"not audio at all"))


def test_the_task_endpoint_transcribes_uploads_as_zoo_predict_json(server: Any, whisper: tuple[Path, Any],
                                                                   spoken: Path) -> None:
    import httpx
    from typer.testing import CliRunner

    from zoo.cli.app import app

    files = [("files", ("spoken.wav", spoken.read_bytes(), "audio/wav"))]
    answer = httpx.post(f"{server.url}/v1/models/whisper/predict?language=fr&task=transcribe", files=files,
                        timeout=60)
    assert answer.status_code == 200, answer.text
    done = CliRunner().invoke(app, ["predict", str(whisper[1].path), str(spoken), "--language", "fr", "--task",
                                    "transcribe", "--json"])
    [row] = json.loads(done.output)
    assert answer.json() == [{**row, "input": "spoken.wav"}]
