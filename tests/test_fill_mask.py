"""fill-mask: a masked LM exported, verified by its top-k tokens, and run torch-free like transformers' pipeline.

    .venv/bin/pytest tests/test_fill_mask.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests import tiny
from tests.artifacts import short_artifact
from zoo.errors import InputError
from zoo.spec import Tolerances
from zoo.tasks.base import Case

# several masks, punctuation and contractions: the filled sequences go through the decoder's clean-up
TEXTS = ["Paris is the [MASK] of France.", "The [MASK] sat on the [MASK], didn't it?",
         "She read the [MASK] twice before folding it carefully into her pocket."]
MAX_LENGTH = 64  # the grid's long case stops here: a 30k-token vocabulary at 512 positions takes minutes to verify


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_head_folder("bert", "fill-mask", tmp_path_factory.mktemp("tiny-mlm"))


@pytest.fixture(scope="module")
def mlm_artifact(mlm_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_artifact(mlm_folder, tmp_path_factory.mktemp("mlm-art") / "mlm", MAX_LENGTH)


def test_a_masked_lm_folder_is_fill_mask(mlm_folder: Path) -> None:
    import warnings

    from zoo.resolver import resolve

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "head unused" warning any more: the head is what runs
        spec = resolve(str(mlm_folder))
    assert spec.task == "fill-mask" and spec.labels is None


def test_export_verifies_top_k_tokens_and_the_decoder(mlm_artifact: Path) -> None:
    manifest = json.loads((mlm_artifact / "manifest.json").read_text())
    assert manifest["task"] == "fill-mask" and manifest["verified"] is True
    assert manifest["preprocess"]["mask_token"] == "[MASK]" and manifest["preprocess"]["mask_token_id"] == 103
    # MiniLM's tokenizer.json decoder cleans up itself; transformers adds nothing after it
    assert manifest["preprocess"]["clean_up_tokenization_spaces"] is False
    checks = {c["name"]: c for c in manifest["verification"]["checks"]}
    assert checks["top-5 token agreement"]["passed"] and checks["decoded text matches the tokenizer"]["passed"]


def test_predictions_match_the_transformers_pipeline(mlm_folder: Path, mlm_artifact: Path) -> None:
    from transformers import pipeline

    import zoo

    reference = pipeline("fill-mask", model=str(mlm_folder), top_k=3)(TEXTS)
    got = zoo.load(mlm_artifact).predict(TEXTS, top_k=3)
    for text, want, result in zip(TEXTS, reference, got):
        want = want if isinstance(want[0], list) else [want]  # the pipeline nests only texts of several masks
        assert len(result.masks) == len(want) == text.count("[MASK]")
        for fills, wanted in zip(result.masks, want):
            assert [(f.token, f.token_str, f.sequence) for f in fills] == [
                (w["token"], w["token_str"], w["sequence"]) for w in wanted]
            np.testing.assert_allclose([f.score for f in fills], [w["score"] for w in wanted], rtol=1e-4)


def test_a_text_without_the_mask_token_is_one_clear_error(mlm_artifact: Path) -> None:
    import zoo

    model = zoo.load(mlm_artifact)
    with pytest.raises(InputError, match=r"input 1 holds no mask token; write \[MASK\] where the word to fill goes"):
        model.predict(["Paris is the [MASK] of France.", "Paris is the capital of France."])
    with pytest.raises(InputError, match="top_k=0; give a positive number"):
        model.predict("Paris is the [MASK] of France.", top_k=0)


def test_cli_predict_fills_masks_and_refuses_a_text_without_one(mlm_artifact: Path) -> None:
    from tests.test_cli import zoo

    done = zoo("predict", str(mlm_artifact), "The [MASK] sat on the [MASK].", "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [len(m) for m in rows[0]["masks"]] == [2, 2]
    assert set(rows[0]["masks"][0][0]) == {"score", "token", "token_str", "sequence"}
    bad = zoo("predict", str(mlm_artifact), "no mask here")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        "error: input 0 holds no mask token; write [MASK] where the word to fill goes, e.g. 'Paris is the [MASK] "
        "of France.'"]


# ---------------------------------------------------------------- the agreement check and its planted faults


def _case(mask: list[list[int]]) -> Case:
    return Case("unit", 0, {"attention_mask": np.array(mask)})


def test_top_k_agreement_catches_a_reordered_candidate_and_excuses_ties() -> None:
    from zoo.tasks import get_task

    tol = Tolerances(atol=1e-4, rtol=1e-3)
    reference = np.array([[[9.0, 7.0, 5.0, 3.0, 1.0, 0.0, -1.0]]])
    swapped = reference.copy()
    swapped[0, 0, [2, 3]] = swapped[0, 0, [3, 2]]  # the third and fourth tokens trade places: a real fault
    agreement = get_task("fill-mask").agreement(None, tol)
    agreement.add({"logits": reference}, {"logits": swapped}, _case([[1]]))
    assert not agreement.check().passed and agreement.check().value == "0.00%"

    near = np.array([[[9.0, 7.0, 5.0, 5.0 - 1e-6, 1.0, 0.0, -1.0]]])
    tied = near.copy()
    tied[0, 0, 3] += 2e-6  # torch's own logits of the two tokens are within tolerance: a tie
    agreement = get_task("fill-mask").agreement(None, tol)
    agreement.add({"logits": near}, {"logits": tied}, _case([[1]]))
    assert agreement.check().passed and "1 ties within tolerance" in agreement.check().detail


def test_top_k_agreement_looks_past_the_first_token_and_ignores_padding() -> None:
    from zoo.tasks import get_task

    reference = np.tile(np.array([9.0, 7.0, 5.0, 3.0, 1.0, 0.0, -1.0]), (1, 2, 1))
    got = reference.copy()
    got[0, 1, [0, 6]] = got[0, 1, [6, 0]]  # padding position: ignored
    agreement = get_task("fill-mask").agreement(None, Tolerances())
    agreement.add({"logits": reference}, {"logits": got}, _case([[1, 0]]))
    assert agreement.check().passed and "1 tokens" in agreement.check().detail
    got[0, 0, [4, 5]] = got[0, 0, [5, 4]]  # the fifth candidate of a real token: top-1 alone would miss it
    agreement = get_task("fill-mask").agreement(None, Tolerances())
    agreement.add({"logits": reference}, {"logits": got}, _case([[1, 0]]))
    assert not agreement.check().passed


def test_a_decoder_with_the_wrong_clean_up_is_caught(mlm_artifact: Path) -> None:
    """The export check compares the runtime's decoded sequences with the tokenizer's: a clean-up the tokenizer
    does not do (or one it does, left out) changes "isn ' t" and fails."""
    from zoo.manifest import Manifest
    from zoo.tasks.fill_mask import _decode_check

    manifest = Manifest.from_dict(json.loads((mlm_artifact / "manifest.json").read_text()))
    ids = np.array([[101, 1996, 103, 2938, 2006, 1996, 103, 1010, 2134, 1005, 1056, 2009, 1029, 102]])
    case = Case("unit", 0, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    record = dict(manifest.preprocess)
    assert _decode_check(mlm_artifact, record, [case]).passed
    record["clean_up_tokenization_spaces"] = not record["clean_up_tokenization_spaces"]
    assert not _decode_check(mlm_artifact, record, [case]).passed


def test_a_masked_lm_fine_tunes_as_a_classifier_on_its_encoder(mlm_folder: Path) -> None:
    """zoo finetune ./bert-base-uncased --data reviews.csv still works: fill-mask hands over to a new head."""
    from zoo.resolver import resolve
    from zoo.train.config import TrainConfig
    from zoo.train.preflight import training_spec

    spec = training_spec(resolve(str(mlm_folder)), TrainConfig(model=str(mlm_folder), data="reviews.csv"))
    assert spec.task == "text-classification"


def test_serve_fills_masks(mlm_artifact: Path) -> None:
    from fastapi.testclient import TestClient

    import zoo
    from zoo.serve import ServeSettings, create_app, load_models

    with TestClient(create_app(load_models([f"mlm={mlm_artifact}"], ServeSettings()), ServeSettings())) as client:
        answer = client.post("/v1/models/mlm/predict", json={"inputs": TEXTS[:2]},
                             params={"top_k": 2})
    assert answer.status_code == 200, answer.text
    want = [{"input": t, **r.to_dict()} for t, r in zip(TEXTS, zoo.load(mlm_artifact).predict(TEXTS[:2], top_k=2))]
    assert answer.json() == json.loads(json.dumps(want))
