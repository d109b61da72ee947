"""Speech recognition fine-tuning: audiofolder + transcripts -> CTC / Whisper training -> WER -> export -> predict.

    .venv/bin/pytest tests/test_asr_train.py

A tiny wav2vec2 CTC model goes through the command line once for the module (finetune with
--metric wer on an audiofolder of synthetic clips, export --onnx, verify, predict). The CTC loss
is compared with transformers' own ``Wav2Vec2ForCTC`` / ``HubertForCTC`` loss, with planted faults
(labels shifted by one, padding frames counted); the word error rate with hand-counted edits and
jiwer. A tiny Whisper trains two steps and its labels are compared with its tokenizer's own.
The export keeps to one grid seed and a 4 s window (the export tests cover the full grid).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile

from tests import tiny

pytestmark = pytest.mark.xdist_group("asr-train")  # one worker: the module's run and export happen once

RATE = 16_000
# words of the tiny CTC vocabulary (upper-case letters, ' and the | word delimiter)
TRANSCRIPTS = ("HELLO WORLD", "THE CAT", "A DOG RAN", "NO", "YES IT IS", "GOOD DAY", "IT'S ME", "RED SUN")


def _clip(index: int, rng: np.random.Generator) -> np.ndarray:
    """A tone, a chord or noise of 0.6-1 s: sounds a random model turns into varied frames."""
    t = np.arange(int(RATE * rng.uniform(0.6, 1.0))) / RATE
    pitch = 150 + 60 * index
    sound = np.sin(2 * np.pi * pitch * t) if index % 3 else rng.uniform(-1, 1, len(t))
    if index % 3 == 2:
        sound = sound + np.sin(2 * np.pi * pitch * 1.5 * t)
    return (0.2 * sound + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_speech(folder: Path, texts: tuple[str, ...] = TRANSCRIPTS, column: str = "transcription",
                 metadata: str = "metadata.csv") -> Path:
    """An audiofolder: the clips beside metadata.csv (file_name, transcript column)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [f"file_name,{column}"]
    for i, text in enumerate(texts):
        soundfile.write(folder / f"clip{i}.wav", _clip(i, rng), RATE)
        rows.append(f"clip{i}.wav,{text}")
    (folder / metadata).write_text("\n".join(rows) + "\n")
    return folder


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech(tmp_path_factory.mktemp("speech") / "speech")


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> Path:
    return tiny.tiny_hf_folder(registry.get("wav2vec2-960h"), tmp_path_factory.mktemp("w2v") / "base")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, wav2vec2: Path, speech: Path) -> dict[str, Any]:
    """``zoo finetune`` -> ``zoo export --onnx`` -> ``zoo verify`` -> ``zoo predict --json`` on the command line."""
    import exporters.source

    from zoo.cli import main
    from zoo.tasks import _audio

    root = tmp_path_factory.mktemp("asr-chain")
    run, artifact = root / "run", root / "artifact"
    codes, printed = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporters.source, "SEEDS", (0,))
        patch.setattr(_audio, "DEFAULT_MAX_SECONDS", 4.0)  # the grid's long case: 4.5 s clips, not 30.5
        for name, argv in (
                ("finetune", ["finetune", str(wav2vec2), "--data", str(speech), "--out", str(run), "--max-steps", "4",
                              "--batch-size", "2", "--eval-every", "2", "--val-fraction", "0.25", "--lr", "1e-3",
                              "--metric", "wer", "--no-progress"]),
                ("export", ["export", str(run), "--onnx", "--out", str(artifact), "--no-fuse"]),
                ("verify", ["verify", str(artifact)]),
                ("predict", ["predict", str(artifact), str(speech / "clip0.wav"), str(speech / "clip3.wav"),
                             "--json"])):
            printed[name] = io.StringIO()
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(printed[name]):
                main(argv)
            codes[name] = exit_info.value.code or 0
    return {"run": run, "artifact": artifact, "codes": codes, "predicted": printed["predict"].getvalue()}


def test_finetune_export_verify_predict_on_the_command_line(chain: dict[str, Any]) -> None:
    assert chain["codes"] == {"finetune": 0, "export": 0, "verify": 0, "predict": 0}
    record = json.loads((chain["run"] / "run.json").read_text())
    assert record["model"]["metric"] == "val_wer" and record["data"]["columns"] == {"input": "audio",
                                                                                    "label": "transcription"}
    history = [json.loads(line) for line in (chain["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = [h for h in history if "val_wer" in h]
    assert [h["step"] for h in evals] == [2, 4] and all(h["val_wer"] >= 0 and h["val_cer"] >= 0 for h in evals)
    # --keep best by WER, lower better: the kept step has the least WER (the earlier one on a tie)
    best = min(evals, key=lambda h: (h["val_wer"], h["step"]))
    assert record["model"]["step"] == best["step"] and record["metrics"]["best"]["val_wer"] == best["val_wer"]
    assert {"vocab.json", "tokenizer_config.json"} <= {p.name for p in (chain["run"] / "model").iterdir()}
    manifest = json.loads((chain["artifact"] / "manifest.json").read_text())
    assert manifest["preprocess"]["ctc"]["tokens"] == list(tiny.CTC_VOCAB)
    rows = json.loads(chain["predicted"])
    assert [Path(r["input"]).name for r in rows] == ["clip0.wav", "clip3.wav"]
    assert all(isinstance(r["text"], str) and r["seconds"] > 0.5 for r in rows)


def test_the_feature_encoder_stays_frozen_and_the_rest_learns(chain: dict[str, Any], wav2vec2: Path) -> None:
    from safetensors.numpy import load_file

    before = load_file(wav2vec2 / "model.safetensors")
    after = load_file(chain["run"] / "model" / "model.safetensors")
    conv = [k for k in before if ".feature_extractor." in k]
    assert conv and all(np.array_equal(before[k], after[k]) for k in conv)
    assert not np.array_equal(before["lm_head.weight"], after["lm_head.weight"])


# ---------------------------------------------------------------- the CTC loss against transformers' own


@pytest.fixture(scope="module")
def hubert(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> tuple[Any, Any]:
    """(spec, model) of a tiny HuBERT CTC: it takes an attention mask, so transformers' loss counts each clip's
    own frames as zoo's does."""
    from zoo import sources
    from zoo.resolver import resolve_folder

    spec = resolve_folder(tiny.tiny_hf_folder(registry.get("hubert-large-960h"), tmp_path_factory.mktemp("hb") / "b"))
    model, _ = sources.for_spec(spec).create_model(spec)
    model.config.ctc_loss_reduction = "sum"
    return spec, model


def _examples(spec: Any, speech: Path) -> Any:
    from zoo.tasks import get_task
    from zoo.tasks._asr_data import read_asr_data

    table = read_asr_data(str(speech))["train"]
    return get_task(spec.task).encode(table, {"input": "audio", "label": "transcription"}, None, spec, None, 0,
                                      "train")


def test_ctc_loss_is_transformers_own_and_planted_faults_change_it(hubert: tuple[Any, Any], speech: Path) -> None:
    import torch

    from zoo.tasks import get_task

    spec, model = hubert
    task = get_task(spec.task)
    examples = _examples(spec, speech)
    batch = examples.batch([0, 1, 3])  # clips of different lengths: padding and a mask
    inputs = task.training_inputs(spec, batch)
    texts = [TRANSCRIPTS[i] for i in (0, 1, 3)]
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.local_path)
    labels = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, labels))
    padded = torch.tensor([ids + [-100] * (width - len(ids)) for ids in labels])
    with torch.no_grad():
        expected = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"],
                         labels=padded).loss
        got, count = task.training_loss(model, batch, inputs)
        assert count == sum(map(len, labels))
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
        # planted: labels off by one id (a vocabulary read one place over)
        shifted = dict(inputs, labels=torch.where(inputs["labels"] >= 0, inputs["labels"] + 1, inputs["labels"]))
        assert abs(float(task.training_loss(model, batch, shifted)[0]) - float(expected)) > 1e-2
        # planted: every clip aligned over the padded length (padding frames counted)
        padded_frames = dict(inputs, samples=torch.full_like(inputs["samples"], batch["input_values"].shape[1]))
        assert abs(float(task.training_loss(model, batch, padded_frames)[0]) - float(expected)) > 1e-2
        loss, targets, records = task.eval_batch(model, batch, inputs, [True, True, False])
    assert targets == len(labels[0]) + len(labels[1]) and len(records) == 2
    assert [r[3] for r in records] == texts[:2]  # references as the tokenizer spells them


def test_validation_transcripts_are_the_runtime_decoding_of_the_best_frames(hubert: tuple[Any, Any],
                                                                            speech: Path) -> None:
    import torch

    from zoo.tasks import get_task

    spec, model = hubert
    task = get_task(spec.task)
    batch = _examples(spec, speech).batch([2, 4])
    with torch.no_grad():
        _, _, records = task.eval_batch(model, batch, task.training_inputs(spec, batch), [True, True])
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.local_path)
    frames = model._get_feat_extract_output_lengths(batch["samples"])
    expected = [tokenizer.decode(logits[i, :frames[i]].argmax(-1).tolist()) for i in range(2)]
    assert [r[2] for r in records] == expected and any(expected)


# ---------------------------------------------------------------- the word error rate


def test_word_error_rate_counts_edits_over_reference_words() -> None:
    import jiwer

    from zoo.tasks import get_task

    references, hypotheses = ["the cat sat", "on the mat"], ["the cat sit", "on mat"]
    # hand-counted: sat -> sit (1 substitution), "the" deleted (1 deletion), over 6 reference words
    records = [(0.0, 1, h, r) for h, r in zip(hypotheses, references)]
    got = get_task("automatic-speech-recognition").metrics(records, ())
    assert got["val_wer"] == pytest.approx(2 / 6) == jiwer.wer(references, hypotheses)
    # characters: a -> i (1), "the " deleted (4), over 21 reference characters (spaces included)
    assert got["val_cer"] == pytest.approx(5 / 21)
    # the twin: hypotheses and references swapped is another rate (edits over the hypothesis' 5 words)
    swapped = get_task("automatic-speech-recognition").metrics([(0.0, 1, r, h) for h, r in zip(hypotheses, references)],
                                                               ())
    assert swapped["val_wer"] == pytest.approx(2 / 5)


def test_the_best_step_is_the_lowest_error_rate() -> None:
    """record_eval keeps the step of the least WER; the twin with WER read as higher-is-better keeps another."""
    from zoo.train import loop

    def best_steps(metric: str) -> list[int | None]:
        trainer = loop.Trainer.__new__(loop.Trainer)
        trainer.state, trainer.metric = loop.TrainState(), metric
        trainer.log = SimpleNamespace(write=lambda record: None)
        trainer.config = SimpleNamespace(early_stopping=None)
        trainer.strategy = SimpleNamespace(agree=lambda stop: stop)
        kept = []
        for step, wer in enumerate((0.8, 0.9, 0.5, 0.6), start=1):
            trainer.state.step = step
            trainer.record_eval({"val_loss": 1.0, "val_wer": wer, "val_cer": wer / 2})
            kept.append(trainer.state.best_step)
        return kept

    assert loop.lower_is_better("val_wer") and loop.lower_is_better("val_cer")
    assert best_steps("val_wer") == [1, 1, 3, 3]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "LOWER_IS_BETTER", ("loss", "perplexity"))
        assert best_steps("val_wer") == [1, 2, 2, 2]


# ---------------------------------------------------------------- data layouts


def test_audiofolder_layouts_follow_datasets_conventions(tmp_path: Path) -> None:
    """metadata.csv at the root, one metadata.jsonl per split folder, a clip column named X_file_name, a CSV."""
    from zoo.tasks._asr_data import asr_columns, read_asr_data

    root = write_speech(tmp_path / "one", TRANSCRIPTS[:3])
    (table,) = read_asr_data(str(root)).values()
    assert table["audio"] == [str((root / f"clip{i}.wav").resolve()) for i in range(3)]
    assert asr_columns(table, None, None) == {"input": "audio", "label": "transcription"}

    split = tmp_path / "splits"
    for name, texts in (("train", TRANSCRIPTS[:3]), ("test", TRANSCRIPTS[3:5])):
        folder = write_speech(split / name, texts, metadata="unused.csv")
        lines = [json.dumps({"speech_file_name": f"clip{i}.wav", "text": t}) for i, t in enumerate(texts)]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    splits = read_asr_data(str(split))
    assert sorted(splits) == ["test", "train"] and len(splits["test"]) == 2
    assert asr_columns(splits["train"], None, None) == {"input": "speech", "label": "text"}
    assert Path(splits["test"]["speech"][1]) == (split / "test" / "clip1.wav").resolve()

    plain = tmp_path / "clips.csv"  # a plain folder of clips and a CSV beside it
    plain.write_text("path,sentence\none/clip0.wav,HELLO WORLD\n")
    (table,) = read_asr_data(str(plain)).values()
    assert table["path"] == [str((root / "clip0.wav").resolve())]
    assert asr_columns(table, None, None) == {"input": "path", "label": "sentence"}


def test_transcripts_outside_the_ctc_vocabulary_or_too_long_are_refused(hubert: tuple[Any, Any],
                                                                       tmp_path: Path) -> None:
    from zoo.errors import DataError

    spec, _ = hubert
    for texts, phrase in ((("hello", *TRANSCRIPTS[1:3]), "lacks 'e', 'h', 'l', 'o'"),
                          ((TRANSCRIPTS[0], "A" * 80, TRANSCRIPTS[2]), "needs 159 CTC frames")):
        folder = write_speech(tmp_path / phrase[:5], texts)
        with pytest.raises(DataError, match="row [01] of the train data") as error:
            _examples(spec, folder)
        assert phrase in str(error.value)


# ---------------------------------------------------------------- bad input on the command line


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-asr")
    untitled = write_speech(root / "untitled", TRANSCRIPTS[:4], column="speaker")
    missing = write_speech(root / "missing", TRANSCRIPTS[:4])
    (missing / "clip2.wav").unlink()
    return {"no-transcript": untitled, "missing-clip": missing}


@pytest.mark.parametrize("case, phrase", [
    ("no-transcript", "no transcript column among the data's columns (audio, speaker); name it transcription"),
    ("missing-clip", "clip2.wav'): no such audio file"),
    ("metric-on-a-classifier", "--metric wer is not reported for text-classification; valid: loss, accuracy"),
])
def test_bad_input_is_one_line_and_writes_nothing(case: str, phrase: str, bad_data: dict[str, Path],
                                                 wav2vec2: Path, tiny_text_classifier: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    model, data = (tiny_text_classifier, "builtin:digits") if case.startswith("metric") else \
        (wav2vec2, bad_data[case])
    code, _, err = cli(["finetune", str(model), "--data", str(data), "--metric", "wer", "--val-fraction", "0.25",
                        "--out", str(out), "--no-progress"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert phrase in err, err
    assert not out.exists()
    if case == "missing-clip":
        assert " data ('" in err and "fix or drop that row" in err


# ---------------------------------------------------------------- Whisper


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multilingual Whisper whose processor was saved for English transcription (the HF recipe's
    ``WhisperProcessor.from_pretrained(..., language=..., task="transcribe")``)."""
    import transformers

    folder = tiny.tiny_whisper_folder(tmp_path_factory.mktemp("whisper") / "base")
    transformers.AutoTokenizer.from_pretrained(folder, language="en", task="transcribe").save_pretrained(folder)
    return folder


def test_whisper_labels_are_its_processors_ids_behind_the_start_token(whisper: Path, tmp_path: Path) -> None:
    import transformers

    from zoo.errors import ConfigError
    from zoo.resolver import resolve_folder
    from zoo.tasks._asr_data import encode_whisper, read_asr_data

    texts = ("the cat", "hello there", "a dog")
    table = read_asr_data(str(write_speech(tmp_path / "speech", texts)))["train"]
    spec = resolve_folder(whisper)
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(whisper)
    examples = encode_whisper(table, {"input": "audio", "label": "transcription"}, spec, extractor, "train")
    tokenizer = transformers.AutoTokenizer.from_pretrained(whisper)
    # the processor's ids: <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|> text <|endoftext|>; the
    # model puts its decoder start in front of the labels itself
    assert examples.labels == [tokenizer(t)["input_ids"][1:] for t in texts]
    assert examples.references == list(texts) and examples.prompt == {"language": "en", "task": "transcribe"}
    batch = examples.batch([0, 2])
    assert tuple(batch["input_features"].shape) == (2, 80, 3000) and batch["labels"][1, -1] == -100

    unset = Path(shutil.copytree(whisper, tmp_path / "unset"))
    tokenizer.language = None  # planted: a multilingual model with no language to learn
    tokenizer.save_pretrained(unset)
    with pytest.raises(ConfigError, match="multilingual Whisper model learns transcripts of one language"):
        encode_whisper(table, {"input": "audio", "label": "transcription"}, resolve_folder(unset), extractor, "train")


def test_whisper_trains_two_steps_with_the_word_error_rate(whisper: Path, speech: Path, tmp_path: Path) -> None:
    from zoo.train.finetune import finetune

    run = finetune(str(whisper), str(speech), out=tmp_path / "run", max_steps=2, batch_size=2, lr=1e-3,
                   val_fraction=0.25, progress=False)
    record = json.loads((run / "run.json").read_text())
    final = record["metrics"]["final"]
    assert record["model"]["metric"] == "val_wer" and final["val_wer"] >= 0 and np.isfinite(final["val_loss"])
    saved = json.loads((run / "model" / "generation_config.json").read_text())
    assert saved["lang_to_id"] and saved["task_to_id"]  # the prompt ids the exported runtime needs
    # the language and task it learned, which generate and the exported runtime then use without being told
    assert (saved["language"], saved["task"]) == ("en", "transcribe")
    base = json.loads((whisper / "generation_config.json").read_text())
    assert "language" not in base  # the twin: the base model's own config does not name them
    assert {"tokenizer.json", "preprocessor_config.json"} <= {p.name for p in (run / "model").iterdir()}
