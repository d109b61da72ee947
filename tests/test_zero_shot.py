"""zero-shot-image-classification: tiny CLIP and SigLIP from configs, exported, verified, run torch-free.

    .venv/bin/pytest tests/test_zero_shot.py

Parity is with transformers' own zero-shot-image-classification pipeline on real photographs
(scikit-learn's and matplotlib's sample pictures); random weights still rank labels by real scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import sklearn
from typer.testing import CliRunner

from tests.tiny import tiny_zero_shot_folder
from zoo.errors import InputError, UnsupportedTaskError
from zoo.tasks import get_task, task_for_hf_config

ARCHS = ("clip", "siglip")
PICTURES = (Path(sklearn.__file__).parent / "datasets/images/china.jpg",
            Path(sklearn.__file__).parent / "datasets/images/flower.jpg",
            Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg")
LABELS = ["a temple", "a flower", "a woman in uniform", "a cat"]
TASK = get_task("zero-shot-image-classification")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: Any) -> dict[str, Path]:
    return {arch: tiny_zero_shot_folder(arch, tmp_path_factory.mktemp(arch)) for arch in ARCHS}


@pytest.fixture(scope="module")
def artifacts(folders: dict[str, Path], tmp_path_factory: Any) -> dict[str, Path]:
    from exporters.onnx import export_onnx
    from zoo.resolver import resolve_folder

    return {arch: export_onnx(resolve_folder(folder), out=tmp_path_factory.mktemp("art") / arch).path
            for arch, folder in folders.items()}


def _pipeline(folder: Path) -> Any:
    """transformers' pipeline with the Pillow image processor (zoo's runtime preprocesses with Pillow too)."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    return transformers.pipeline("zero-shot-image-classification", model=str(folder), image_processor=processor)


def test_clip_and_siglip_configs_resolve_to_the_task() -> None:
    for model_type, arch in (("clip", "CLIPModel"), ("siglip", "SiglipModel")):
        config = {"architectures": [arch], "model_type": model_type, "text_config": {}, "vision_config": {}}
        assert task_for_hf_config(config) is TASK
    # SigLIP2's vision tower takes NaFlex patch sequences: still refused, by name
    siglip2 = {"architectures": ["Siglip2Model"], "model_type": "siglip2", "text_config": {}, "vision_config": {}}
    with pytest.raises(UnsupportedTaskError, match="Siglip2Model"):
        task_for_hf_config(siglip2)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_verifies_and_records_scoring(artifacts: dict[str, Path], arch: str) -> None:
    manifest = json.loads((artifacts[arch] / "manifest.json").read_text())
    checks = {c["name"]: c["passed"] for c in manifest["verification"]["checks"]}
    for name in ("zero-shot ranking", "logit scale and bias", "each tower alone",
                 "tokenizer.json reproduces tokenisation", "output logits_per_image"):
        assert checks[name], name
    pp = manifest["preprocess"]
    assert pp["template"] == "This is a photo of {}."
    assert pp["activation"] == ("softmax" if arch == "clip" else "sigmoid")
    assert pp["padding"] == ("longest" if arch == "clip" else "max_length")
    if arch == "siglip":  # the tiny SigLIP was saved with scale exp(2.3) and bias -1.5
        assert pp["logit_scale"] == pytest.approx(np.exp(2.3), rel=1e-6) and pp["logit_bias"] == -1.5
    else:  # CLIP's initial logit scale is exp(2.6592); it has no bias
        assert pp["logit_scale"] == pytest.approx(np.exp(2.6592), rel=1e-5) and pp["logit_bias"] == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_predict_matches_the_transformers_pipeline_on_real_pictures(folders: dict[str, Path],
                                                                    artifacts: dict[str, Path], arch: str) -> None:
    import zoo

    pipe = _pipeline(folders[arch])
    model = zoo.load(artifacts[arch])
    got = model.predict([str(p) for p in PICTURES], labels=LABELS)
    for picture, result in zip(PICTURES, got):
        want = pipe(str(picture), candidate_labels=LABELS)
        assert list(result.labels) == [w["label"] for w in want]
        np.testing.assert_allclose(result.scores, [w["score"] for w in want], atol=1e-5)
    if arch == "clip":  # a softmax over the labels
        assert sum(got[0].scores) == pytest.approx(1.0)
    top = model.predict(str(PICTURES[0]), labels=",".join(LABELS), top_k=2)
    assert top.labels == got[0].labels[:2]


def test_a_template_of_ones_own_is_the_pipelines_hypothesis_template(folders: dict[str, Path],
                                                                     artifacts: dict[str, Path]) -> None:
    import zoo

    template = "a blurry photo of {}"
    want = _pipeline(folders["clip"])(str(PICTURES[1]), candidate_labels=LABELS, hypothesis_template=template)
    got = zoo.load(artifacts["clip"]).predict(str(PICTURES[1]), labels=LABELS, template=template)
    np.testing.assert_allclose(got.scores, [w["score"] for w in want], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_are_the_models_own_and_score_as_predict_does(folders: dict[str, Path],
                                                                 artifacts: dict[str, Path], arch: str) -> None:
    import torch
    import transformers

    import zoo
    from zoo.tasks.zero_shot_image_classification import zero_shot_scores

    model = zoo.load(artifacts[arch])
    images = model.embed_images([str(p) for p in PICTURES], batch_size=2)  # two onnxruntime calls
    prompts = [f"This is a photo of {label}." for label in LABELS]
    texts = model.embed_text(prompts)
    assert images.shape[0] == 3 and texts.shape[0] == 4
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    torch_model = transformers.AutoModelForZeroShotImageClassification.from_pretrained(folders[arch]).eval()
    with torch.no_grad():
        pixels = torch.from_numpy(model.preprocess([str(p) for p in PICTURES]).arrays["pixel_values"])
        want = torch.nn.functional.normalize(torch_model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    np.testing.assert_allclose(images, want.numpy(), atol=1e-5)
    scores = zero_shot_scores(images, texts, model.manifest.preprocess)
    predicted = model.predict(str(PICTURES[2]), labels=LABELS)
    np.testing.assert_allclose(sorted(scores[2], reverse=True), predicted.scores, atol=1e-6)
    assert model.embed_text("a cat").shape == (1, texts.shape[1])


def test_bad_labels_and_options_are_one_clear_error(artifacts: dict[str, Path]) -> None:
    import zoo

    model = zoo.load(artifacts["clip"])
    picture = str(PICTURES[0])
    for options, message in (({}, "needs candidate labels"), ({"labels": "a,,b"}, "empty label"),
                             ({"labels": [1, 2]}, "list of strings"), ({"labels": "a", "template": "no slot"}, "{}"),
                             ({"labels": "a", "top_k": 0}, "top_k")):
        with pytest.raises(InputError, match=message):
            model.predict(picture, **options)
    with pytest.raises(InputError, match="embed_text needs an image-text artifact"):
        get_task("feature-extraction").embed(lambda arrays: arrays, None, "text", ["a"])


def test_cli_predict_prints_the_ranked_labels(artifacts: dict[str, Path], capsys: Any) -> None:
    import zoo
    from zoo.cli import main
    from zoo.cli.app import app as cli

    runner = CliRunner()
    done = runner.invoke(cli, ["predict", str(artifacts["siglip"]), str(PICTURES[1]), "--labels", ",".join(LABELS),
                               "--json"])
    assert done.exit_code == 0, done.output
    (row,) = json.loads(done.output)
    want = zoo.load(artifacts["siglip"]).predict(str(PICTURES[1]), labels=LABELS)
    assert [r["label"] for r in row["top_k"]] == list(want.labels)
    table = runner.invoke(cli, ["predict", str(artifacts["siglip"]), str(PICTURES[1]), "--labels", "a cat,a dog"])
    assert table.exit_code == 0 and "a dog" in table.output
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(artifacts["siglip"]), str(PICTURES[1])])
    error = capsys.readouterr().err
    assert exited.value.code == 1 and error.count("\n") == 1 and "--labels" in error


def test_serve_predict_takes_labels_and_answers_as_the_cli(artifacts: dict[str, Path]) -> None:
    import zoo
    from fastapi.testclient import TestClient

    from zoo.serve import ServeSettings, create_app, load_models

    settings = ServeSettings(max_batch_size=8, max_wait_ms=2, max_body_bytes=1 << 20)
    files = [("files", ("flower.jpg", PICTURES[1].read_bytes()))]
    with TestClient(create_app(load_models([f"clip={artifacts['clip']}"], settings), settings)) as client:
        answer = client.post("/v1/models/clip/predict", params={"labels": ",".join(LABELS), "top_k": 2}, files=files)
        assert answer.status_code == 200, answer.text
        missing = client.post("/v1/models/clip/predict", files=files)
    want = zoo.load(artifacts["clip"]).predict(str(PICTURES[1]), labels=LABELS, top_k=2)
    (row,) = answer.json()
    assert row["input"] == "flower.jpg" and [r["label"] for r in row["top_k"]] == list(want.labels)
    np.testing.assert_allclose([r["score"] for r in row["top_k"]], want.scores, atol=1e-6)
    assert missing.status_code == 400 and "labels" in missing.json()["error"]


# ---------------------------------------------------------------- planted faults: each check catches its own


def _torch_case(folder: Path) -> tuple[Any, list[Any], list[dict[str, np.ndarray]]]:
    """(spec, grid cases of one seed, torch references) of a tiny model, as the exporter computes them."""
    from exporters.source import build_source, torch_outputs

    from zoo.resolver import resolve_folder

    source = build_source(resolve_folder(folder), seeds=(0,))
    references = [torch_outputs(source.module, c.inputs, TASK.output_names(source.spec)) for c in source.cases]
    return source, source.cases, references


def test_a_dropped_logit_scale_fails_the_scale_check(folders: dict[str, Path], artifacts: dict[str, Path]) -> None:
    from zoo.tasks.zero_shot_image_classification import _scale_check

    source, _, references = _torch_case(folders["siglip"])
    record = TASK.model_record(source.module)
    assert _scale_check(record, references).passed
    assert not _scale_check({**record, "logit_scale": 1.0}, references).passed  # the scale dropped
    assert not _scale_check({**record, "logit_bias": 0.0}, references).passed  # the bias dropped


def test_the_wrong_padding_fails_the_tokenizer_check(folders: dict[str, Path], artifacts: dict[str, Path]) -> None:
    """SigLIP's prompts padded to the longest (not to 64 tokens, as its pipeline does) are caught."""
    from zoo.tasks.zero_shot_image_classification import _tokenizer_check

    _, cases, _ = _torch_case(folders["siglip"])
    record = json.loads((artifacts["siglip"] / "manifest.json").read_text())["preprocess"]
    assert _tokenizer_check(artifacts["siglip"], record, cases).passed
    assert not _tokenizer_check(artifacts["siglip"], {**record, "padding": "longest"}, cases).passed


def test_a_misranked_or_drifted_graph_fails_the_agreement() -> None:
    from zoo.spec import Tolerances
    from zoo.tasks.base import Case

    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    reference = {"image_embeds": unit(rng.normal(size=(2, 8))), "text_embeds": unit(rng.normal(size=(3, 8)))}
    reference["logits_per_image"] = 10 * reference["image_embeds"] @ reference["text_embeds"].T
    case = Case("1 image x 3 labels", 0, {})
    good = TASK.agreement(None, Tolerances())
    good.add(reference, dict(reference), case)
    assert good.check().passed
    swapped = TASK.agreement(None, Tolerances())
    swapped.add(reference, {**reference, "logits_per_image": reference["logits_per_image"][:, ::-1].copy()}, case)
    assert not swapped.check().passed
    drifted = TASK.agreement(None, Tolerances())
    drifted.add(reference, {**reference, "text_embeds": unit(reference["text_embeds"] + 0.05)}, case)
    assert not drifted.check().passed


def test_a_tower_that_differs_alone_fails_its_check(folders: dict[str, Path], artifacts: dict[str, Path]) -> None:
    from zoo.tasks.zero_shot_image_classification import _towers_alone_check

    _, cases, references = _torch_case(folders["clip"])
    record: dict[str, Any] = {}
    assert _towers_alone_check(artifacts["clip"], record, cases, references).passed
    shuffled = [{**r, "image_embeds": r["image_embeds"][:, ::-1].copy()} for r in references]
    assert not _towers_alone_check(artifacts["clip"], record, cases, shuffled).passed


def test_siglip_pads_prompts_to_64_tokens_at_runtime(artifacts: dict[str, Path]) -> None:
    import zoo

    manifest = zoo.load(artifacts["siglip"]).manifest
    preprocessor = TASK.runtime_preprocessor(artifacts["siglip"], manifest)
    arrays = preprocessor.texts(["a cat", "a much longer prompt about a dog in the park"])
    assert arrays["input_ids"].shape == (2, 64) and arrays["pixel_values"].shape[0] == 0
    images = preprocessor([str(PICTURES[0])]).arrays
    assert images["pixel_values"].shape == (1, 3, 64, 64) and images["input_ids"].shape[0] == 0


def test_center_floor_crops_as_transformers_image_processors_do() -> None:
    """CLIP's resize-then-crop, pixel for pixel with transformers' Pillow processor; torchvision's rounded
    offsets ("center") are a pixel off on this picture, which is why the mode exists."""
    import transformers
    from PIL import Image

    from zoo.tasks.preprocess import ImagePreprocessor

    picture = Image.open(PICTURES[0]).convert("RGB")  # 640 x 427: 95 x 64 after the resize, 31 columns to crop
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    want = processor(images=[picture], return_tensors="np")["pixel_values"][0]
    record = {"input_size": [3, 64, 64], "mean": processor.image_mean, "std": processor.image_std,
              "interpolation": "bicubic", "crop_pct": 1.0}
    floor = ImagePreprocessor.from_record({**record, "crop_mode": "center-floor"})([picture]).arrays["pixel_values"]
    rounded = ImagePreprocessor.from_record({**record, "crop_mode": "center"})([picture]).arrays["pixel_values"]
    np.testing.assert_allclose(floor[0], want, atol=1e-5)
    assert np.abs(rounded[0] - want).max() > 0.1


def test_optimize_refuses_the_two_tower_graph_in_one_line(artifacts: dict[str, Path], tmp_path: Path,
                                                          capsys: Any) -> None:
    from zoo.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(artifacts["clip"]), "--level", "int8", "--out", str(tmp_path / "opt")])
    error = capsys.readouterr().err
    assert exited.value.code == 1 and "two towers" in error and "Traceback" not in error
    assert not (tmp_path / "opt").exists()


def test_clip_folders_with_bare_number_sizes_crop_as_clip_does(tmp_path: Path) -> None:
    """openai/clip-* write size: 224, crop_size: 224 (the shorter side, a square crop), not dicts."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": 224, "crop_size": 224, "do_center_crop": True, "resample": 3,
         "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    config = {"model_type": "clip", "architectures": ["CLIPModel"], "vision_config": {"image_size": 224},
              "text_config": {"max_position_embeddings": 77}}
    inputs, preprocess, _ = TASK.describe_hf(tmp_path, config, None)
    assert preprocess.input_size == (3, 224, 224) and preprocess.crop_mode == "center-floor"
    assert preprocess.crop_pct == 1.0 and preprocess.interpolation == "bicubic" and preprocess.max_length == 77
    assert [i.name for i in inputs] == ["pixel_values", "input_ids", "attention_mask"]
    assert inputs[1].shape == ("texts", "sequence")
