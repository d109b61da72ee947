"""question-answering: a span head exported, verified by its answer spans, and decoded torch-free in windows.

    .venv/bin/pytest tests/test_question_answering.py

transformers 5 dropped its question-answering pipeline; the reference here is what that
pipeline did, from transformers' own parts: the fast tokenizer's overflowing windows,
the torch model, and ``select_starts_ends`` (the span decoder the pipeline used, kept
by transformers for document question answering), answers aligned to whole words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import tiny
from tests.artifacts import short_artifact
from zoo.errors import InputError
from zoo.spec import Tolerances

MAX_LENGTH = 96  # windows of 96 tokens sharing 48: the long paragraph below needs several
PARAGRAPHS = [
    ("Who designed the stone bridge?",
     "The river rises in the hills north of the town, where three streams meet in a narrow valley. For most of the "
     "year it is shallow enough to wade across, but after the spring rains it floods the meadows on either bank. "
     "The first bridge was built of timber in the twelfth century by the monks of the nearby abbey, who charged a "
     "toll of one penny for every cart. It burned down twice and was replaced in 1780 by the stone bridge that "
     "still stands, designed by the engineer Thomas Harrow, whose statue faces the market square. On the first "
     "Saturday of June the town holds a fair on the bridge, and the toll, long abolished, is collected again for "
     "one day to pay for the fireworks."),
    ("When did the lighthouse stop using oil?",
     "The lighthouse on the northern cape was lit for the first time in 1852. Its keepers burned whale oil until "
     "1904, when paraffin lamps replaced it, and the light was electrified in 1951. The last keeper, Margaret "
     "Doyle, left the island in 1987, after which the light ran automatically."),
    ("What do the volunteers count?",
     "Every winter, volunteers walk the coast path at dawn and count the seabirds resting on the cliffs."),
]


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_head_folder("bert", "question-answering", tmp_path_factory.mktemp("tiny-qa"))


@pytest.fixture(scope="module")
def qa_artifact(qa_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_artifact(qa_folder, tmp_path_factory.mktemp("qa-art") / "qa", MAX_LENGTH)


def reference_answers(folder: Path, question: str, context: str, max_seq_len: int, doc_stride: int, top_k: int,
                      handle_impossible_answer: bool, max_answer_len: int = 15) -> list[dict[str, Any]]:
    """What transformers' question-answering pipeline answered, rebuilt from transformers' own parts."""
    import inspect

    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.pipelines.document_question_answering import select_starts_ends

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    encoded = tokenizer(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
    # segment ids where the model has them (not DistilBERT; not RoBERTa, though the suite's MiniLM tokenizer makes them)
    segments = getattr(model.config, "type_vocab_size", 0) >= 2
    takes = [k for k in ("input_ids", "attention_mask", "token_type_ids")
             if k in inspect.signature(model.forward).parameters and (segments or k != "token_type_ids")]
    answers, null = [], 1e6
    for i, window in enumerate(encoded.encodings):
        ids = np.array(window.ids)
        p_mask = np.array([s != 1 for s in window.sequence_ids], dtype=np.int64)
        p_mask[ids == tokenizer.cls_token_id] = 0
        with torch.no_grad():
            out = model(**{k: torch.tensor([encoded[k][i]]) for k in takes})
        starts, ends, scores, null = select_starts_ends(out.start_logits.numpy(), out.end_logits.numpy(), p_mask,
                                                        np.array([window.attention_mask]), null, top_k,
                                                        handle_impossible_answer, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            try:
                begin = window.word_to_chars(window.token_to_word(s), 1)[0]
                end = window.word_to_chars(window.token_to_word(e), 1)[1]
            except TypeError:  # a token outside any word: its own offsets
                begin, end = window.offsets[s][0], window.offsets[e][1]
            answers.append({"score": float(score), "start": begin, "end": end, "answer": context[begin:end]})
    if handle_impossible_answer:
        answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def mismatches(folder: Path, artifact: Path, **options: Any) -> list[str]:
    """Where zoo's answers differ from the reference's, on every paragraph (empty: parity)."""
    import zoo

    pp = json.loads((artifact / "manifest.json").read_text())["preprocess"]
    model = zoo.load(artifact)
    got = model.predict([{"question": q, "context": c} for q, c in PARAGRAPHS], **options)
    problems = []
    for (question, context), result in zip(PARAGRAPHS, got):
        want = reference_answers(folder, question, context, pp["max_seq_len"], pp["doc_stride"], **options)
        have = [a.to_dict() for a in result.answers]
        if [(a["answer"], a["start"], a["end"]) for a in have] != [(a["answer"], a["start"], a["end"]) for a in want]:
            problems.append(f"{question}: {have[:1]} vs {want[:1]}")
        elif not np.allclose([a["score"] for a in have], [a["score"] for a in want], rtol=1e-4, atol=1e-7):
            problems.append(f"{question}: scores {[a['score'] for a in have]} vs {[a['score'] for a in want]}")
    return problems


def test_a_question_answering_folder_is_its_task(qa_folder: Path) -> None:
    from zoo.resolver import resolve

    assert resolve(str(qa_folder)).task == "question-answering"


def test_export_verifies_spans_and_windows(qa_artifact: Path) -> None:
    manifest = json.loads((qa_artifact / "manifest.json").read_text())
    assert manifest["verified"] is True and [o["name"] for o in manifest["outputs"]] == ["start_logits",
                                                                                         "end_logits"]
    assert manifest["preprocess"]["max_seq_len"] == MAX_LENGTH and manifest["preprocess"]["doc_stride"] == 48
    checks = {c["name"]: c for c in manifest["verification"]["checks"]}
    assert checks["answer span agreement"]["passed"] and checks["tokenizer.json reproduces the windows"]["passed"]
    assert int(checks["answer span agreement"]["detail"].split()[0]) > 5  # the long context made several windows


@pytest.mark.parametrize("options", [{"top_k": 3, "handle_impossible_answer": False},
                                     {"top_k": 2, "handle_impossible_answer": True}])
def test_answers_match_the_pipeline_in_windows(qa_folder: Path, qa_artifact: Path, options: dict[str, Any]) -> None:
    assert mismatches(qa_folder, qa_artifact, **options) == []


def test_a_span_decoder_off_by_one_token_is_caught(qa_folder: Path, qa_artifact: Path, monkeypatch) -> None:
    from zoo.tasks import _spans

    decode = _spans.decode_spans

    def off_by_one(*args: Any) -> Any:
        starts, ends, scores = decode(*args)
        return starts, np.minimum(ends + 1, len(args[0]) - 1), scores

    monkeypatch.setattr(_spans, "decode_spans", off_by_one)
    assert len(mismatches(qa_folder, qa_artifact, top_k=1, handle_impossible_answer=False)) == len(PARAGRAPHS)


def test_span_agreement_catches_a_moved_span_and_excuses_ties() -> None:
    from zoo.tasks import get_task
    from zoo.tasks.base import Case

    start = np.array([[0.0, 1.0, 6.0, 2.0, 0.5, 0.0]], dtype=np.float32)
    end = np.array([[0.0, 0.5, 1.0, 2.0, 6.0, 0.0]], dtype=np.float32)
    case = Case("unit", 0, {"attention_mask": np.array([[1, 1, 1, 1, 1, 0]])})
    moved = end.copy()
    moved[0, [3, 4]] = moved[0, [4, 3]]  # onnxruntime's answer would end one token early: a real fault
    agreement = get_task("question-answering").agreement(None, Tolerances())
    agreement.add({"start_logits": start, "end_logits": end}, {"start_logits": start, "end_logits": moved}, case)
    assert not agreement.check().passed
    near = end.copy()
    near[0, 3] = 6.0 - 1e-6
    flipped = near.copy()
    flipped[0, 3], flipped[0, 4] = 6.0, 6.0 - 1e-6
    agreement = get_task("question-answering").agreement(None, Tolerances())
    agreement.add({"start_logits": start, "end_logits": near}, {"start_logits": start, "end_logits": flipped}, case)
    assert agreement.check().passed and "1 ties within tolerance" in agreement.check().detail


def test_inputs_and_options_are_checked_in_one_line(qa_artifact: Path) -> None:
    import zoo

    model = zoo.load(qa_artifact)
    assert model.predict(("What do the volunteers count?", PARAGRAPHS[2][1])).best is not None
    with pytest.raises(InputError, match="input 0 lacks a non-empty context"):
        model.predict({"question": "Why?"})
    with pytest.raises(InputError, match="input 0 is a string but not a JSON object"):
        model.predict("Why?")
    with pytest.raises(InputError, match="max_answer_len=0; give a positive whole number"):
        model.predict({"question": "Why?", "context": "Because."}, max_answer_len=0)


def test_cli_takes_question_and_context_flags_or_json(qa_artifact: Path, tmp_path: Path) -> None:
    from tests.test_cli import zoo

    question, context = PARAGRAPHS[1]
    done = zoo("predict", str(qa_artifact), "--question", question, "--context", context, "--json", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)[0]
    assert len(row["answers"]) == 2 and context[row["start"]:row["end"]] == row["answer"]
    lines = tmp_path / "pairs.jsonl"
    lines.write_text("\n".join(json.dumps({"question": q, "context": c}) for q, c in PARAGRAPHS))
    done = zoo("predict", str(qa_artifact), f"@{lines}", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == len(PARAGRAPHS)
    bad = zoo("predict", str(qa_artifact), "--question", question)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        "error: --question and --context go together: give both (or JSON inputs with question and context)"]


# ---------------------------------------------------------------- data and fine-tuning


def test_builtin_facts_and_the_official_squad_layout(tmp_path: Path) -> None:
    from zoo.tasks import get_task

    task = get_task("question-answering")
    splits, digest = task.load_builtin("facts")
    assert set(splits) == {"train", "validation"} and digest == task.load_builtin("facts")[1]
    row = splits["train"][0]
    start = row["answers"]["answer_start"][0]
    assert row["context"][start:start + len(row["answers"]["text"][0])] == row["answers"]["text"][0]

    squad = {"version": "1.1", "data": [{"title": "Bridges", "paragraphs": [{
        "context": PARAGRAPHS[0][1],
        "qas": [{"id": "q1", "question": PARAGRAPHS[0][0],
                 "answers": [{"text": "Thomas Harrow", "answer_start": PARAGRAPHS[0][1].index("Thomas Harrow")}]},
                {"id": "q2", "question": "Who owns the bridge?", "answers": [], "is_impossible": True}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    table = task.read_data(str(path))["train"]
    assert table["id"] == ["q1", "q2"] and table["answers"][1] == {"text": [], "answer_start": []}
    assert task.data_columns(table, None, None) == {"input": "question", "context": "context", "label": "answers"}


def test_squad_metrics_are_the_official_normalisation() -> None:
    from zoo.tasks import get_task

    # articles and punctuation do not count; the question's best window is the one scored
    records = [(0, 0.9, "the Thomas Harrow.", ["Thomas Harrow"]), (0, 0.2, "monks", ["Thomas Harrow"]),
               (1, 0.5, "1904 lamps", ["1904"])]
    scores = get_task("question-answering").metrics(records, ())
    assert scores["val_exact_match"] == pytest.approx(0.5) and scores["val_f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_training_targets_point_at_the_answer_or_cls(qa_folder: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    from zoo.tasks._squad import SquadExamples

    context = PARAGRAPHS[0][1]
    table = datasets.Dataset.from_list([{"question": PARAGRAPHS[0][0], "context": context, "answers": {
        "text": ["Thomas Harrow"], "answer_start": [context.index("Thomas Harrow")]}}])
    tokenizer = AutoTokenizer.from_pretrained(qa_folder)
    examples = SquadExamples(table, {"input": "question", "context": "context", "label": "answers"}, tokenizer,
                             64, 32, "train")
    assert len(examples) > 2  # windows
    found = [r for r in examples.rows if r["start_positions"] > 0]
    assert found and all(tokenizer.decode(r["input_ids"][r["start_positions"]:r["end_positions"] + 1]) ==
                         "thomas harrow" for r in found)
    assert any(r["start_positions"] == r["end_positions"] == 0 for r in examples.rows)  # windows without it


@pytest.mark.slow
def test_finetune_on_builtin_facts_raises_f1(qa_folder: Path, tmp_path: Path) -> None:
    from zoo.train.finetune import finetune

    out = tmp_path / "run"
    finetune(str(qa_folder), "builtin:facts", out=str(out), epochs=3, batch_size=16, lr=3e-3, max_length=64,
             eval_every=25, progress=False)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    f1 = [row["val_f1"] for row in log if "val_f1" in row]
    assert len(f1) >= 2 and f1[-1] > f1[0] + 0.1, f1


def test_serve_answers_question_context_objects(qa_artifact: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.test_cli import zoo
    from zoo.serve import ServeSettings, create_app, load_models

    pairs = [{"question": q, "context": c} for q, c in PARAGRAPHS[1:]]
    with TestClient(create_app(load_models([f"qa={qa_artifact}"], ServeSettings()), ServeSettings())) as client:
        answer = client.post("/v1/models/qa/predict", json={"inputs": pairs}, params={"top_k": 2})
    assert answer.status_code == 200, answer.text
    done = zoo("predict", str(qa_artifact), *(json.dumps(p) for p in pairs), "--top-k", "2", "--json")
    assert [row["answers"] for row in answer.json()] == [row["answers"] for row in json.loads(done.stdout)]
