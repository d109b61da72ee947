"""The task layer: one module per task, found on disk; every stage asks the task object.

    .venv/bin/pytest tests/test_tasks.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zoo.errors import ArtifactError, UnsupportedTaskError
from zoo.tasks import all_tasks, get_task, task_for_hf_config, task_names

ROOT = Path(__file__).resolve().parents[1]
# the interface each task must implement itself (the base class only raises NotImplementedError)
REQUIRED = ("output_names", "export_example", "grid", "write_preprocessor", "agreement", "runtime_preprocessor",
            "is_single", "postprocess", "bench_items", "render")


def test_tasks_are_the_modules_on_disk() -> None:
    modules = sorted(p.stem.replace("_", "-") for p in (ROOT / "zoo" / "tasks").glob("*.py")
                     if not p.stem.startswith("_") and p.stem not in ("base", "preprocess", "results"))
    assert list(task_names()) == modules
    assert {"image-classification", "text-classification", "token-classification",
            "feature-extraction"} <= set(task_names())
    for task in all_tasks():
        assert get_task(task.name) is task and task.modality in ("text", "image", "audio")


@pytest.mark.parametrize("name", task_names())
def test_every_task_implements_the_interface(name: str) -> None:
    from zoo.tasks.base import Task

    task = get_task(name)
    # a generating task's results come from a loop of graph calls (zoo.runtime.generate, or the task's own
    # generator: an encoder-decoder's), not from postprocess
    loops = task.generates or type(task).generator is not Task.generator
    required = [m for m in REQUIRED if not (loops and m == "postprocess")]
    missing = [m for m in required if getattr(type(task), m) is getattr(Task, m)]
    assert not missing, f"{name} leaves {missing} to the base class"
    if task.trainable:
        trained = ("data_columns", "read_labels", "encode", "training_loss", "eval_batch", "metrics")
        assert not [m for m in trained if getattr(type(task), m) is getattr(Task, m)]


def test_unknown_task_is_one_clear_error() -> None:
    with pytest.raises(UnsupportedTaskError, match=r"task 'image-clasification' .*did you mean "
                                                   r"'image-classification'.*valid tasks"):
        get_task("image-clasification")


def test_no_task_name_is_compared_outside_the_task_modules() -> None:
    """The issue's grep, as a guard: task names in quotes appear only in zoo/tasks/."""
    pattern = re.compile("|".join(f'"{re.escape(n)}"' for n in task_names()))
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("zoo", "exporters")
                 for p in (ROOT / folder).rglob("*.py") if "tasks" not in p.relative_to(ROOT).parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize(("architecture", "model_type", "task"), [
    ("BertForSequenceClassification", "bert", "text-classification"),
    ("DistilBertForTokenClassification", "distilbert", "token-classification"),
    ("ViTForImageClassification", "vit", "image-classification"),
    ("BertModel", "bert", "feature-extraction"),
    ("BertForMaskedLM", "bert", "fill-mask"),
    ("BertForPreTraining", "bert", "feature-extraction"),
    ("DistilBertForQuestionAnswering", "distilbert", "question-answering"),
])
def test_a_config_names_its_task(architecture: str, model_type: str, task: str) -> None:
    config = {"architectures": [architecture], "model_type": model_type}
    assert task_for_hf_config(config).name == task


def test_sentence_transformers_folder_is_an_embedding_model() -> None:
    config = {"architectures": ["BertModel"], "model_type": "bert"}
    assert task_for_hf_config(config, sentence_transformers=True).name == "feature-extraction"


@pytest.mark.parametrize("architecture", ["BertForMultipleChoice", "BertForNextSentencePrediction"])
def test_a_head_no_task_handles_is_named_never_guessed(architecture: str) -> None:
    config = {"architectures": [architecture], "model_type": "gpt2"}
    with pytest.raises(UnsupportedTaskError, match=f"{architecture}, which no zoo task handles; zoo handles: "):
        task_for_hf_config(config)


def test_local_folder_of_an_unhandled_head_fails_in_one_line(tmp_path: Path) -> None:
    from zoo.resolver import resolve

    config = {"model_type": "bert", "architectures": ["BertForMultipleChoice"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedTaskError, match=f"folder '{tmp_path}'.*BertForMultipleChoice"):
        resolve(str(tmp_path))


def test_predict_options_are_checked_by_the_task() -> None:
    from zoo.errors import InputError

    assert get_task("text-classification").check_options({"top_k": 3}) == {"top_k": 3}
    with pytest.raises(InputError, match="top_k do not apply to token-classification; valid: none"):
        get_task("token-classification").check_options({"top_k": 3})
    with pytest.raises(InputError, match="threshold do not apply to image-classification; valid: top_k"):
        get_task("image-classification").check_options({"threshold": 0.5})


def test_save_is_refused_where_there_is_nothing_to_draw(tmp_path: Path) -> None:
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="--save draws predictions on images; text-classification"):
        get_task("text-classification").save_pictures(["hi"], [], tmp_path)


def test_builtin_data_sets_come_from_the_tasks() -> None:
    from zoo.errors import DataError

    images, text = get_task("image-classification"), get_task("text-classification")
    assert "digits" in images.builtin_datasets()
    with pytest.raises(DataError, match="'builtin:nope' for image-classification models; valid: builtin:digits"):
        images.load_builtin("nope")
    with pytest.raises(DataError, match="'builtin:digits' for text-classification models; valid: none"):
        text.load_builtin("digits")


# ---------------------------------------------------------------- validation metrics


def test_token_metrics_are_entity_level_seqeval() -> None:
    """A half-found entity counts as wrong at entity level, though most of its tokens are right."""
    labels = ("O", "B-PER", "I-PER")
    task = get_task("token-classification")
    gold = [0, 1, 2, 2, 0]  # O B-PER I-PER I-PER O: one three-word entity
    half = [0, 1, 2, 0, 0]  # the same start, one word short: a different span
    got = task.metrics([(gold, half)], labels)
    assert got["val_accuracy"] == pytest.approx(0.8)
    assert got["val_f1"] == 0.0 and got["val_precision"] == 0.0 and got["val_recall"] == 0.0
    assert task.metrics([(gold, gold)], labels)["val_f1"] == 1.0


def test_classification_metrics_report_macro_f1() -> None:
    task = get_task("text-classification")
    # always predicting the majority class: high accuracy, poor macro F1
    got = task.metrics([(0, 0)] * 9 + [(1, 0)], ("a", "b"))
    assert got["val_accuracy"] == pytest.approx(0.9)
    assert got["val_macro_f1"] == pytest.approx((2 * 0.9 / 1.9) / 2)


# ---------------------------------------------------------------- the manifest schema


@pytest.fixture(scope="module")
def manifest_dict(timm_artifact: Path) -> dict:
    return json.loads((timm_artifact / "manifest.json").read_text())


def test_manifest_round_trips(manifest_dict: dict) -> None:
    from zoo.manifest import Manifest

    parsed = Manifest.from_dict(manifest_dict)
    assert parsed.to_dict() == manifest_dict
    assert parsed.model_spec().task == parsed.task == "image-classification"


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(surprise=1), "unknown field 'surprise'"),
    (lambda m: m.pop("outputs"), "missing field 'outputs'"),
    (lambda m: m.update(opset="18"), "field 'opset' must be an integer, got '18'"),
    (lambda m: m.update(verified="yes"), "field 'verified' must be true or false"),
    (lambda m: m.update(format_version=99), "format_version 99; this zoo reads up to 1: upgrade zoo-toolkit"),
    (lambda m: m.update(format="other"), "is not a zoo manifest"),
    (lambda m: m["inputs"][0].update(shape="3x224"), r"inputs\[0\] must be"),
    (lambda m: m["files"].update({"x": {"sha256": "ab", "size": 1}}), r"files\['x'\] must be"),
    (lambda m: m.update(labels=[1, 2]), "field 'labels' must be a list of strings or null"),
])
def test_manifest_faults_are_one_line(manifest_dict: dict, change, message: str) -> None:
    import copy

    from zoo.manifest import Manifest

    broken = copy.deepcopy(manifest_dict)
    change(broken)
    with pytest.raises(ArtifactError, match=message) as info:
        Manifest.from_dict(broken)
    assert "\n" not in str(info.value)
