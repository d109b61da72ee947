"""The CLI as a new user meets it (issue 22, defects 4, 7 and parts of 12): each reproduced, and shown fixed.

    .venv/bin/pytest tests/test_newcomer_cli.py
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.artifacts import copy_artifact
from tests.test_cli_newcomer import one_error_line, zoo
from zoo.errors import ArtifactError, ConfigError, InputError, UnsupportedTaskError, ZooWarning
from zoo.resolver import resolve
from zoo.runtime.inputs import gather_inputs
from zoo.tasks import get_task

TEXT_TASKS = ("feature-extraction", "text-classification", "token-classification")


# ---------------------------------------------------------------- defect 4: a file given to a text model


@pytest.fixture()
def desk(tmp_path: Path) -> Path:
    """A working folder as a new user has one: a picture, a folder of photos, a list of texts."""
    (tmp_path / "digit-8.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "photos").mkdir()
    (tmp_path / "reviews.txt").write_text("great film\n\nawful plot\n")
    return tmp_path


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_a_text_model_refuses_an_argument_that_names_a_file_or_folder(task: str, desk: Path) -> None:
    for arg, kind in ((desk / "digit-8.png", "file"), (desk / "photos", "directory")):
        with pytest.raises(InputError, match=f"'{arg}' is a {kind}, but this {task} model reads text: .*"
                                             f"--text to take '{arg}' as text"):
            gather_inputs([str(arg)], get_task(task))


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_at_names_a_file_that_must_exist(task: str, desk: Path) -> None:
    assert gather_inputs([f"@{desk / 'reviews.txt'}"], get_task(task)) == ["great film", "awful plot"]
    missing = desk / "missing.txt"
    with pytest.raises(InputError, match=f"the list file '{missing}' is missing; .*add --text"):
        gather_inputs([f"@{missing}"], get_task(task))
    with pytest.raises(InputError, match="'someone loved it' is missing"):
        gather_inputs(["@someone loved it"], get_task(task))


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_text_flag_takes_every_argument_as_it_stands(task: str, desk: Path) -> None:
    args = [str(desk / "digit-8.png"), str(desk / "photos"), f"@{desk}/missing.txt", "-", "@"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gather_inputs(args, get_task(task), io.StringIO("never read\n"), literal=True) == args


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_plain_text_passes_and_a_missing_picture_name_is_warned_about(task: str, desk: Path) -> None:
    plain = ["5 * great", "a film about photos", "x" * 5000, "~nosuchuser", "@"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is file-like: not a word of warning
        assert gather_inputs(plain, get_task(task)) == plain
    with pytest.warns(ZooWarning, match="'digit-9.png' is not a file here, so it is taken as text"):
        assert gather_inputs(["digit-9.png"], get_task(task)) == ["digit-9.png"]


def test_text_flag_is_refused_for_a_model_that_reads_files(desk: Path) -> None:
    with pytest.raises(ConfigError, match="--text takes every input as text, but this image-classification model"):
        gather_inputs([str(desk / "digit-8.png")], get_task("image-classification"), literal=True)
    # the image model itself still reads the file, and @ lists as before
    assert gather_inputs([str(desk / "digit-8.png")], get_task("image-classification")) == [
        str(desk / "digit-8.png")]


def test_zoo_predict_on_a_text_model_says_a_file_is_not_text(text_cls_artifact: Path, desk: Path) -> None:
    """The issue's commands, run as a user runs them: each was exit 0 with the literal string classified."""
    art = str(text_cls_artifact)
    for args, named in ((["digit-8.png"], "'digit-8.png' is a file"), (["./photos"], "'./photos' is a directory"),
                        (["@missing.txt"], "the list file 'missing.txt' is missing")):
        line = one_error_line(zoo("predict", art, *args, cwd=desk))
        assert named in line and "--text" in line, line
    done = zoo("predict", art, "--text", "digit-8.png", "@missing.txt", "--json", cwd=desk)
    assert done.returncode == 0, done.stderr
    assert [r["input"] for r in json.loads(done.stdout)] == ["digit-8.png", "@missing.txt"]
    warned = zoo("predict", art, "digit-9.png", "--json", cwd=desk)
    assert warned.returncode == 0 and "warning: 'digit-9.png' is not a file here" in warned.stderr, warned.stderr
    assert "--text" in zoo("predict", "--help").stdout


def test_the_python_api_never_reads_a_file_for_a_text_input(text_cls_artifact: Path, desk: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """zoo.load(...).predict and zoo serve take a string as the text, whatever files exist."""
    import zoo as zoo_api

    monkeypatch.chdir(desk)
    model = zoo_api.load(text_cls_artifact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(model.predict(["digit-8.png", "photos", "@reviews.txt"])) == 3


# ---------------------------------------------------------------- defect 7: folders zoo does not handle


def _config_folder(folder: Path, config: Any) -> Path:
    """A hub folder's config.json, saved by transformers itself (no weights: the task is decided from it)."""
    config.save_pretrained(folder)
    return folder


def _tiny_configs() -> dict[str, Any]:
    import transformers as hf

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    towers = dict(text_config=dict(small, vocab_size=99, max_position_embeddings=16),
                  vision_config=dict(small, image_size=32, patch_size=16))

    def with_head(config: Any, architecture: str) -> Any:
        config.architectures = [architecture]
        return config

    return {
        # CLIP and SigLIP are zero-shot-image-classification's own (tests/test_zero_shot.py); SigLIP2's
        # variable-resolution patches are not
        "Siglip2Model": with_head(hf.Siglip2Config(**towers), "Siglip2Model"),
        "BertForPreTraining": with_head(hf.BertConfig(vocab_size=99, **small), "BertForPreTraining"),
        "BertModel": with_head(hf.BertConfig(vocab_size=99, **small), "BertModel"),
    }


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-folders")
    return {name: _config_folder(root / name, config) for name, config in _tiny_configs().items()}


# (encoder-decoders the text2text task does not handle: tests/test_text_generation.py)
@pytest.mark.parametrize(("architecture", "why"), [("Siglip2Model", "a dual encoder of text and vision")])
def test_a_folder_no_task_handles_is_refused_in_one_line(architecture: str, why: str,
                                                         hub_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = hub_folders[architecture]
    expected = f"folder '{folder}': the model is a {architecture} ({why}), which no zoo task handles; zoo handles: "
    with pytest.raises(UnsupportedTaskError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve(str(folder))
    out = tmp_path / "artifact"
    line = one_error_line(zoo("export", str(folder), "--onnx", "--random-init", "--out", str(out)))
    assert expected in line and "feature-extraction" in line, line
    assert not out.exists() and list(tmp_path.iterdir()) == [], "nothing half-written"


def test_a_pretraining_head_folder_is_its_encoder_and_says_so(hub_folders: dict[str, Path]) -> None:
    # (a masked-LM head is fill-mask's own: tests/test_fill_mask.py)
    with pytest.warns(ZooWarning, match="the model is a BertForPreTraining: no zoo task runs that head, so zoo takes "
                                        "the encoder under it as feature-extraction"):
        assert resolve(str(hub_folders["BertForPreTraining"])).task == "feature-extraction"
    done = zoo("info", str(hub_folders["BertForPreTraining"]))
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("warning: ")] == [
        line for line in done.stderr.splitlines() if line.strip()], done.stderr
    assert "BertForPreTraining: no zoo task runs that head" in done.stderr


def test_a_bare_encoder_folder_is_feature_extraction_without_a_word(hub_folders: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve(str(hub_folders["BertModel"])).task == "feature-extraction"


@pytest.mark.parametrize(("config", "task"), [
    # a head on an encoder-decoder is still that head's task; only the bare-model tasks step back
    ({"architectures": ["BartForSequenceClassification"], "model_type": "bart", "is_encoder_decoder": True},
     "text-classification"),
    # the encoder half of T5 (sentence-t5) is one encoder
    ({"architectures": ["T5EncoderModel"], "model_type": "t5", "is_encoder_decoder": True}, "feature-extraction"),
    # one tower's sub-config is no pair
    ({"architectures": ["BertModel"], "model_type": "bert", "text_config": {"hidden_size": 8}}, "feature-extraction"),
])
def test_composite_configs_refuse_only_the_bare_model_tasks(config: dict[str, Any], task: str) -> None:
    from zoo.tasks import task_for_hf_config

    assert task_for_hf_config(config).name == task


# ---------------------------------------------------------------- defect 12: the smaller ones


def _run_dir(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    (folder / "run.json").write_text(json.dumps({"model_dir": "model"}))
    return folder


def test_predict_on_a_run_dir_says_export_it_first(tmp_path: Path) -> None:
    import zoo as zoo_api

    run = _run_dir(tmp_path / "run")
    for folder in (run, run / "model"):
        with pytest.raises(ArtifactError, match=f"it is a fine-tuning run \\(zoo finetune\\): export the run first "
                                                f"with 'zoo export {run} --onnx'"):
            zoo_api.load(folder)
    line = one_error_line(zoo("predict", str(run), "hello"))
    assert f"export the run first with 'zoo export {run} --onnx'" in line and "did not finish" not in line, line
    # twin: a folder that is neither keeps the old advice
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="an export that did not finish leaves no folder"):
        zoo_api.load(tmp_path / "empty")


def _artifact_of_run(src: Path, dest: Path, run_dir: Path | None) -> Path:
    art = copy_artifact(src, dest)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["run"] = {"run_dir": str(run_dir)} if run_dir is not None else None
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_export_of_an_artifact_names_the_run_it_was_made_from(timm_artifact: Path, tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    art = _artifact_of_run(timm_artifact, tmp_path / "art", run)
    line = one_error_line(zoo("export", str(art), "--onnx", "--out", str(tmp_path / "again")))
    assert f"is already a zoo artifact; check it with 'zoo verify {art}', or export the fine-tuning run it was " \
           f"made from: 'zoo export {run} --onnx'" in line, line
    gone = _artifact_of_run(timm_artifact, tmp_path / "art-gone", tmp_path / "deleted-run")
    line = one_error_line(zoo("export", str(gone), "--onnx", "--out", str(tmp_path / "again")))
    assert f"the fine-tuning run it was made from ({tmp_path / 'deleted-run'}, no longer there" in line, line
    plain = _artifact_of_run(timm_artifact, tmp_path / "art-plain", None)
    line = one_error_line(zoo("export", str(plain), "--onnx", "--out", str(tmp_path / "again")))
    assert "or export its source (" in line and "fine-tuning run" not in line, line
    assert not (tmp_path / "again").exists()


def test_triton_twice_names_its_own_options(timm_artifact: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = zoo("triton", str(timm_artifact), str(repo))
    assert first.returncode == 0, first.stderr
    line = one_error_line(zoo("triton", str(timm_artifact), str(repo)))
    assert "already exists and is not empty; choose another --name or REPOSITORY, or remove it" in line, line
    assert "--out" not in line
    # the option it names works
    assert zoo("triton", str(timm_artifact), str(repo), "--name", "second").returncode == 0


def test_export_still_names_out_for_a_taken_folder(tmp_path: Path) -> None:
    """The destination check's twin: the commands that have --out keep naming it."""
    from zoo.artifact import check_destination

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConfigError, match="choose another --out, or remove it"):
        check_destination(tmp_path / "taken")


def test_embeddings_work_as_the_arrays_the_readme_shows() -> None:
    """The README's `vectors[0] @ vectors[1]` raised TypeError on Embedding objects."""
    from zoo.tasks.results import Embedding

    first, second = (Embedding(np.array(v, dtype=np.float32)) for v in ([0.6, 0.8], [1.0, 0.0]))
    vectors = [first, second]
    assert vectors[0] @ vectors[1] == pytest.approx(0.6)
    assert np.allclose(first @ np.eye(2), [0.6, 0.8]) and np.allclose(np.eye(2) @ first, [0.6, 0.8])
    assert np.stack(vectors).shape == (2, 2) and np.array_equal(np.asarray(first), first.vector)
    assert np.stack(vectors) @ first == pytest.approx([1.0, 0.6])


def test_readme_describes_embeddings_and_run_dirs_as_they_are() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "numpy arrays, one per image" not in readme and "one Embedding per image" in readme
    assert "`curves.png`, `base/`" not in readme and "a `timm:` run has none" in readme
