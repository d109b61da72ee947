"""text2text-generation: encoder-decoders exported as an encoder graph and a decoder graph with a cache, verified
against transformers step by step, greedily and by beam search, and generated from without torch.

Tiny random models from tests/tiny.py (``tiny_seq2seq_folder``); BART is exported once per module with one grid
seed, the other families (T5, Marian, mBART, Pegasus) each in one slow test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import tiny
from zoo.errors import InputError

pytestmark = pytest.mark.xdist_group("text2text")  # one worker: the module's shared launch/export runs once

TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank.", "Hello"]


def _export(folder: Path, out: Path):
    from exporters.onnx import export_onnx

    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setattr(exporters.source, "SEEDS", (0,))  # one seed: every case kind, a third of the time
        return export_onnx(str(folder), out=out)


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-bart")
    folder = tiny.tiny_seq2seq_folder("bart", root / "model")
    return folder, _export(folder, root / "artifact")


def _hf(folder: Path, texts: list[str], **options):
    """transformers' own generate on ``texts``: each row's tokens after the decoder start, cut after EOS."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    encoded = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, **options).numpy()[:, 1:]
    eos = model.generation_config.eos_token_id
    rows = []
    for row in out.tolist():
        rows.append(row[:row.index(eos)] if eos in row else row)  # zoo's token_ids leave EOS out
    return rows


def test_claims_seq2seq_heads():
    from zoo.tasks import task_for_hf_config

    for arch in ("BartForConditionalGeneration", "T5ForConditionalGeneration", "MarianMTModel",
                 "MBartForConditionalGeneration", "PegasusForConditionalGeneration"):
        assert task_for_hf_config({"architectures": [arch], "model_type": "bart"}).name == "text2text-generation"


def test_export_records_both_graphs(bart):
    _, result = bart
    manifest = result.manifest
    names = {c.name: c for c in result.report.checks}
    for check in ("encoder: shape grid", "decoder steps (own cache)", "greedy generation vs transformers",
                  "beam search vs transformers", "encoder: tokenizer.json reproduces tokenisation"):
        assert names[check].passed, names[check]
    graph = manifest.preprocess["graphs"]["encoder"]
    assert graph["file"] == "encoder.onnx" and "encoder.onnx" in manifest.files
    assert [o["name"] for o in graph["outputs"]][:2] == ["last_hidden_state", "cross.0.key"]
    assert any(f.startswith("encoder/test_data_set_0/") for f in manifest.files)
    assert [i.name for i in manifest.inputs][:2] == ["decoder_input_ids", "encoder_attention_mask"]
    assert manifest.preprocess["generation"]["decoder_start_token_id"] == 102


def test_verify_replays_the_encoder_and_catches_a_damaged_one(bart, tmp_path):
    import shutil

    from exporters.golden import write_golden
    from exporters.verify import verify_artifact
    from zoo.artifact import hash_files

    _, result = bart
    report = verify_artifact(result.path)
    assert any(c.name == "encoder: golden test_data_set_0" and c.passed for c in report.checks)
    # planted: the encoder's golden outputs no longer match its graph (the manifest re-hashed, so only the replay
    # can notice)
    copy = tmp_path / "copy"
    shutil.copytree(result.path, copy)
    from exporters.golden import read_golden

    inputs, outputs = read_golden(copy / "encoder" / "test_data_set_0")
    shutil.rmtree(copy / "encoder" / "test_data_set_0")
    write_golden(copy / "encoder", 0, inputs, {k: v + 1.0 for k, v in outputs.items()})
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = {k: {"sha256": v.sha256, "size": v.size} for k, v in hash_files(copy).items()
                         if k != "manifest.json"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    from zoo.errors import VerificationError

    with pytest.raises(VerificationError) as caught:
        verify_artifact(copy)
    assert any(c.name == "encoder: golden test_data_set_0" and not c.passed for c in caught.value.report.checks)


def test_runtime_greedy_and_beam_match_transformers(bart):
    import zoo

    folder, result = bart
    model = zoo.load(result.path)
    got = model.generate(TEXTS, max_new_tokens=12, num_beams=1)
    assert [list(g.token_ids) for g in got] == _hf(folder, TEXTS, max_new_tokens=12, num_beams=1)
    beams = model.generate(TEXTS[:2], max_new_tokens=12, num_beams=3, length_penalty=0.5)
    assert [list(g.token_ids) for g in beams] == _hf(folder, TEXTS[:2], max_new_tokens=12, num_beams=3,
                                                     length_penalty=0.5)
    ngram = model.generate(TEXTS[:1], max_new_tokens=12, no_repeat_ngram_size=2)
    assert ngram[0].token_ids == tuple(_hf(folder, TEXTS[:1], max_new_tokens=12, no_repeat_ngram_size=2)[0])
    assert model.predict(TEXTS[0], max_new_tokens=12).text == got[0].text


def test_sampling_is_seeded_and_options_are_checked(bart):
    import zoo

    _, result = bart
    model = zoo.load(result.path)
    first = model.generate(TEXTS[:1], max_new_tokens=8, temperature=1.0, seed=3)[0]
    assert first == model.generate(TEXTS[:1], max_new_tokens=8, temperature=1.0, seed=3)[0]
    with pytest.raises(InputError, match="num_beams=0"):
        model.generate(TEXTS[:1], num_beams=0)
    with pytest.raises(InputError, match="tgt_lang 'xx_XX'.*valid"):
        model.generate(TEXTS[:1], tgt_lang="xx_XX")
    with pytest.raises(InputError, match="stop do not apply"):
        model.generate(TEXTS[:1], stop=["."])


def test_cli_predict_prints_the_text_and_json(bart):
    import zoo

    _, result = bart
    expected = zoo.load(result.path).generate([TEXTS[0]], max_new_tokens=6)[0]
    run = subprocess.run([sys.executable, "-m", "zoo", "predict", str(result.path), TEXTS[0], "--max-new-tokens", "6"],
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == expected.text.strip()
    run = subprocess.run([sys.executable, "-m", "zoo", "predict", str(result.path), TEXTS[0], "--max-new-tokens", "6",
                          "--num-beams", "2", "--json"], capture_output=True, text=True, check=True)
    [row] = json.loads(run.stdout)
    assert row["input"] == TEXTS[0] and row["finish_reason"] in ("stop", "length")
    bad = subprocess.run([sys.executable, "-m", "zoo", "predict", str(result.path), TEXTS[0], "--stop", "x"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--stop" in bad.stderr


# ---------------------------------------------------------------- planted faults: each check sees its fault


def _decoder_steps(bart, tmp_path: Path, encoder_cls=None, decoder_cls=None):
    """The step-by-step check on graphs exported from a faulty encoder or decoder module (the other graph good)."""
    import transformers

    from exporters.onnx import export_graph
    from exporters.verify import ort_session, within_tolerance
    from zoo.artifact import read_manifest
    from zoo.tasks._seq2seq_decode import EncoderDecoder
    from zoo.tasks._seq2seq_torch import decoder_module, encoder_module
    from zoo.tasks._seq2seq_verify import decode_steps
    from zoo.tasks.text2text_generation import TASK, TOKENS, _layers, generation_record

    folder, result = bart
    spec = read_manifest(result.path).model_spec()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    [encoder] = TASK.companion_graphs(decoder_module(model, _layers(spec), True), spec, tokenizer, (0,))
    paths = {"encoder": result.path / "encoder.onnx", "model": result.path / "model.onnx"}
    if encoder_cls is not None:
        paths["encoder"] = tmp_path / "encoder.onnx"
        export_graph(encoder_module(model, list(TOKENS), encoder_cls).eval(), encoder.spec, encoder.example,
                     paths["encoder"])
    if decoder_cls is not None:
        paths["model"] = tmp_path / "model.onnx"
        export_graph(decoder_module(model, _layers(spec), True, decoder_cls).eval(), spec,
                     TASK.export_example(spec, tokenizer), paths["model"])
    cases = [c for c in encoder.cases if c.kind in ("short", "padded")]
    core = EncoderDecoder(ort_session(paths["encoder"]), ort_session(paths["model"]), generation_record(model))
    return decode_steps(model, core, cases, spec.verify, within_tolerance)


def test_planted_cross_attention_from_the_wrong_encoder_output_is_caught(bart, tmp_path):
    from zoo.tasks._seq2seq_torch import EncoderWithCross

    class WrongStates(EncoderWithCross):
        def cross_source(self, encoded):
            return encoded.hidden_states[0]  # the embeddings, not the encoder's last layer

    check = _decoder_steps(bart, tmp_path, encoder_cls=WrongStates)
    assert not check.passed and "step 0" in check.detail


def test_planted_decoder_that_ignores_its_cache_is_caught(bart, tmp_path):
    from zoo.tasks._seq2seq_torch import DecoderWithCross

    class NoCache(DecoderWithCross):
        def run(self, ids, mask, past, cross):
            return super().run(ids, mask, [(k[:, :, :0], v[:, :, :0]) for k, v in past], cross)

    check = _decoder_steps(bart, tmp_path, decoder_cls=NoCache)
    assert not check.passed and "step 1" in check.detail  # the first step has no cache to ignore


# ---------------------------------------------------------------- the other families


@pytest.mark.slow
# Marian: the registry's opus-mt-en-de entry, exported with every check in tests/test_export_registry.py
@pytest.mark.parametrize("family", ["t5", "mbart", "pegasus"])
def test_family_exports_verified(family, tmp_path):
    import zoo

    folder = tiny.tiny_seq2seq_folder(family, tmp_path / "model")
    result = _export(folder, tmp_path / "artifact")
    assert result.report.passed
    got = zoo.load(result.path).generate(TEXTS[:2], max_new_tokens=8)
    assert [list(g.token_ids) for g in got] == _hf(folder, TEXTS[:2], max_new_tokens=8)
    if family == "mbart":  # the target language is forced as the first token: the model's default, or by name
        import transformers

        model = zoo.load(result.path)
        ids = transformers.AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(list(tiny.MBART_LANGUAGES))
        firsts = [model.generate(TEXTS[:1], max_new_tokens=2, tgt_lang=code)[0].token_ids[0]
                  for code in tiny.MBART_LANGUAGES]
        assert firsts == ids and got[0].token_ids[0] == ids[1]  # generation_config.json forces ro_RO


def test_serve_predict_translates_like_zoo_predict(bart):
    from fastapi.testclient import TestClient

    import zoo
    from zoo.serve import ServeSettings, create_app, load_models

    _, result = bart
    settings = ServeSettings(max_batch_size=4, max_wait_ms=2, max_body_bytes=1 << 20)
    with TestClient(create_app(load_models([f"bart={result.path}"], settings), settings)) as client:
        answer = client.post("/v1/models/bart/predict?max_new_tokens=6&num_beams=2", json={"inputs": TEXTS[:2]})
        refused = client.post("/v1/models/bart/predict?threshold=0.5", json={"inputs": TEXTS[:1]})
    assert answer.status_code == 200, answer.text
    expected = zoo.load(result.path).generate(TEXTS[:2], max_new_tokens=6, num_beams=2)
    assert [row["text"] for row in answer.json()] == [g.text for g in expected]
    assert refused.status_code == 400 and "threshold" in refused.text


def test_planted_wrong_start_token_fails_greedy_and_beam_checks(bart):
    import transformers

    from exporters.verify import ort_session
    from zoo.tasks._seq2seq_decode import EncoderDecoder
    from zoo.tasks._seq2seq_verify import beam_search, greedy
    from zoo.tasks.base import Case
    from zoo.tasks.text2text_generation import generation_record

    folder, result = bart
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    encoded = tokenizer(TEXTS[:2], padding=True, return_tensors="np", return_token_type_ids=False)
    cases = [Case("padded", 0, {k: v.astype(np.int64) for k, v in encoded.items()}, texts=TEXTS[:2])]
    record = generation_record(model)
    sessions = ort_session(result.path / "encoder.onnx"), ort_session(result.path / "model.onnx")
    good = EncoderDecoder(*sessions, record)
    assert greedy(model, good, cases, model_tolerance(result)).passed and beam_search(model, good, cases).passed
    wrong = EncoderDecoder(*sessions, {**record, "decoder_start_token_id": 101})  # BOS, not the model's EOS start
    assert not greedy(model, wrong, cases, model_tolerance(result)).passed
    assert not beam_search(model, wrong, cases).passed


def model_tolerance(result):
    return result.manifest.model_spec().verify


def test_optimize_refuses_a_two_graph_artifact(bart, tmp_path):
    from exporters.optimize import optimize
    from zoo.errors import ConfigError

    _, result = bart
    with pytest.raises(ConfigError, match="encoder.onnx beside model.onnx"):
        optimize(result.path, out=tmp_path / "optimised")
    assert not (tmp_path / "optimised").exists()


def test_bench_refuses_with_a_pointer(bart):
    import zoo
    from zoo.errors import ConfigError
    from zoo.runtime.bench import bench

    _, result = bart
    with pytest.raises(ConfigError, match="bench_seq2seq.py"):
        bench(zoo.load(result.path))


def test_training_columns_are_source_and_target():
    import datasets

    from zoo.errors import DataError
    from zoo.tasks.text2text_generation import TASK

    table = datasets.Dataset.from_dict({"source": ["a"], "target": ["b"], "id": ["1"]})
    assert TASK.data_columns(table, None, None) == {"source": "source", "target": "target"}
    assert TASK.data_columns(table, "id", "source") == {"source": "id", "target": "source"}
    with pytest.raises(DataError, match="no source column found among: question, answer"):
        TASK.data_columns(datasets.Dataset.from_dict({"question": ["a"], "answer": ["b"]}), None, None)


@pytest.mark.slow
def test_finetune_on_source_target_columns_reports_bleu(bart, tmp_path):
    folder, _ = bart
    words = "red green blue cat dog sun moon tree river stone".split()
    rows = [{"source": " ".join(words[(i * k) % 10] for k in (1, 3, 7)), "target": words[i % 10]} for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = subprocess.run([sys.executable, "-m", "zoo", "finetune", str(folder), "--data", str(data), "--max-steps", "6",
                          "--batch-size", "8", "--eval-every", "6", "--out", str(tmp_path / "run"), "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= last["val_bleu"] <= 100 and last["val_loss"] > 0
    (tmp_path / "bad.csv").write_text("question,answer\nhi,there\nyes,no\n")
    bad = subprocess.run([sys.executable, "-m", "zoo", "finetune", str(folder), "--data", str(tmp_path / "bad.csv"),
                          "--max-steps", "1", "--out", str(tmp_path / "bad-run")], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "no source column found" in bad.stderr
    assert not (tmp_path / "bad-run").exists()
