"""Object detection end to end: export and verification, runtime parity with transformers, planted faults,
``zoo predict`` (table, JSON, pictures) and bad inputs.

The tiny DETR is exported once for the module; YOLOS and RT-DETR (slow) once each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests import tiny
from tests.artifacts import grid_and_torch_outputs, make_artifact, scene_files
from zoo.cli.app import app
from zoo.errors import DataError, InputError, UnsupportedTaskError, VerificationError

runner = CliRunner()
SIZES = ((64, 96), (120, 80), (50, 50))  # (height, width): three aspect ratios in one call


@pytest.fixture(scope="module")
def detr_folder(tmp_path_factory: Any, registry: Any) -> Path:
    return tiny.tiny_hf_folder(registry.get("detr-resnet-50"), tmp_path_factory.mktemp("tiny-detr"))


@pytest.fixture(scope="module")
def detr_artifact(tmp_path_factory: Any, detr_folder: Path) -> Path:
    return make_artifact(detr_folder, tmp_path_factory.mktemp("rt") / "detr")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: Any) -> list[Path]:
    """Generated scenes saved as PNG files at SIZES."""
    return scene_files(tmp_path_factory.mktemp("pictures"), 7, SIZES, "scene")


@pytest.fixture(scope="module")
def grid_and_torch(detr_folder: Path) -> tuple[list[Any], list[dict[str, np.ndarray]]]:
    """The export grid of the tiny DETR and torch's raw outputs on it (references of the parity checks)."""
    return grid_and_torch_outputs(detr_folder, "AutoModelForObjectDetection", ("logits", "pred_boxes"))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``zoo ARGS`` in this process, with the CLI's own error handling: (exit code, stderr)."""
    from zoo.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    return int(done.value.code or 0), capsys.readouterr().err


def _decoding(artifact: Path) -> Any:
    from zoo.artifact import read_manifest
    from zoo.tasks._detection_postprocess import Decoding

    return Decoding.from_dict(read_manifest(artifact).preprocess["detection"])


# ---------------------------------------------------------------- export and verification


def test_detr_export_passes_every_check(detr_artifact: Path) -> None:
    manifest = json.loads((detr_artifact / "manifest.json").read_text())
    checks = {c["name"]: c["passed"] for c in manifest["verification"]["checks"]}
    assert checks["detections agree"] and checks["runtime preprocessing"]
    assert checks["box decoding (numpy vs transformers)"]
    assert all(checks.values()), checks
    assert manifest["task"] == "object-detection"
    assert [i["name"] for i in manifest["inputs"]] == ["pixel_values", "pixel_mask"]


def test_runtime_equals_transformers_post_processing(detr_artifact: Path, detr_folder: Path,
                                                     pictures: list[Path]) -> None:
    """Pictures of three sizes in one call: the torch-free result equals the processor + torch + post-processing."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    import zoo
    from zoo.tasks._detection_verify import middle_threshold

    images = [Image.open(p).convert("RGB") for p in pictures]
    processor = AutoImageProcessor.from_pretrained(str(detr_folder), backend="pil")
    model = AutoModelForObjectDetection.from_pretrained(str(detr_folder)).eval()
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))
    sizes = [(image.height, image.width) for image in images]
    everything = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    threshold = middle_threshold(np.concatenate([r["scores"].numpy() for r in everything]))
    assert threshold is not None  # the tiny detector's scores are spread (tests/tiny.py)
    theirs = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    ours = zoo.load(detr_artifact).predict([str(p) for p in pictures], threshold=threshold)
    assert [r.size for r in ours] == sizes
    assert sum(len(r) for r in ours) > 0
    for mine, their, (height, width) in zip(ours, theirs, sizes):
        assert [d.label_id for d in mine] == their["labels"].tolist()
        np.testing.assert_allclose([d.score for d in mine], their["scores"].numpy(), atol=1e-4)
        boxes = np.asarray([d.box for d in mine]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, their["boxes"].numpy().reshape(-1, 4), atol=1e-3 * max(height, width))


def test_one_call_equals_the_pictures_alone_in_shape(detr_artifact: Path, pictures: list[Path]) -> None:
    import zoo

    model = zoo.load(detr_artifact)
    together = model.predict([str(p) for p in pictures], threshold=0.0)
    alone = [model.predict(str(p), threshold=0.0) for p in pictures]
    assert [r.size for r in together] == [r.size for r in alone] == list(SIZES)
    assert [len(r) for r in together] == [len(r) for r in alone] == [10, 10, 10]  # one detection per query


def test_middle_threshold_avoids_tied_scores() -> None:
    from zoo.tasks._detection_verify import middle_threshold

    assert middle_threshold(np.array([0.1, 0.2, 0.3, 0.9, 0.95])) == pytest.approx(0.6)
    # a barely trained detector: every query within 1e-7 of the others, no threshold among them is fair
    assert middle_threshold(np.float32(0.2618) + np.arange(10, dtype=np.float32) * 1e-8) is None
    assert middle_threshold(np.array([0.4])) is None


# ---------------------------------------------------------------- planted faults (each with its twin above)


def test_correct_box_decoding_passes_the_parity_check(detr_artifact: Path, grid_and_torch: Any) -> None:
    from zoo.tasks._detection_verify import postprocessing_check

    check = postprocessing_check(detr_artifact, _decoding(detr_artifact), *grid_and_torch)
    assert check.passed, check.detail


def test_box_decoding_that_swaps_x_and_y_is_caught(detr_artifact: Path, grid_and_torch: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.tasks import _detection_postprocess
    from zoo.tasks._detection_verify import postprocessing_check

    right = _detection_postprocess.center_to_corners
    monkeypatch.setattr(_detection_postprocess, "center_to_corners", lambda b: right(b[..., [1, 0, 3, 2]]))
    check = postprocessing_check(detr_artifact, _decoding(detr_artifact), *grid_and_torch)
    assert not check.passed and "boxes differ" in check.detail


def test_correct_normalisation_passes_the_preprocessing_check(detr_artifact: Path, grid_and_torch: Any) -> None:
    from zoo.tasks._detection_verify import preprocessing_check

    cases, _ = grid_and_torch
    check = preprocessing_check(detr_artifact, list(cases[0].inputs), cases)
    assert check.passed, check.detail


def test_wrong_normalisation_is_caught(detr_artifact: Path, grid_and_torch: Any, tmp_path: Path) -> None:
    from zoo.tasks._detection_verify import preprocessing_check

    cases, _ = grid_and_torch
    config = json.loads((detr_artifact / "preprocessor_config.json").read_text())
    config["image_mean"], config["image_std"] = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    check = preprocessing_check(tmp_path, list(cases[0].inputs), cases)
    assert not check.passed and "pixel_values max diff" in check.detail


@pytest.mark.slow
def test_exporter_that_fixes_the_image_size_is_refused(detr_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters import onnx as onnx_exporter

    dims = onnx_exporter._dims
    monkeypatch.setattr(onnx_exporter, "_dims", lambda spec: {name: {axis: dim for axis, dim in axes.items()
                                                                     if axis == 0}
                                                              for name, axes in dims(spec).items()})
    # the fallback exporter fixes its shapes too, or it would rescue the export (as it should for a real user)
    torchscript = onnx_exporter._export_torchscript
    monkeypatch.setattr(onnx_exporter, "_export_torchscript",
                        lambda module, spec, tensors, path, dynamic: torchscript(module, spec, tensors, path, False))
    with pytest.raises(VerificationError) as caught:
        onnx_exporter.export_onnx(str(detr_folder), out=tmp_path / "fixed")
    failed = {c.name for c in caught.value.report.failures}
    assert "shape grid" in failed
    assert not (tmp_path / "fixed").exists()


def test_zoo_verify_rechecks_the_detection_artifact(detr_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "verify", str(detr_artifact))
    assert code == 0, err


def test_serve_predicts_what_zoo_predict_json_prints(detr_artifact: Path, pictures: list[Path]) -> None:
    """``zoo serve``'s /predict asks the task for its modality and options (threshold) like the CLI."""
    from fastapi.testclient import TestClient

    from zoo.serve import ServeSettings, create_app, load_models

    settings = ServeSettings(max_batch_size=4, max_wait_ms=2, max_body_bytes=256 << 10)
    with TestClient(create_app(load_models([f"detr={detr_artifact}"], settings), settings)) as client:
        files = [("files", (pictures[2].name, pictures[2].read_bytes(), "image/png"))]
        answer = client.post("/v1/models/detr/predict?threshold=0.3", files=files)
        refused = client.post("/v1/models/detr/predict?threshold=2", files=files)
    assert answer.status_code == 200, answer.text
    done = runner.invoke(app, ["predict", str(detr_artifact), str(pictures[2]), "--json", "--threshold", "0.3"])
    expected = json.loads(done.output)
    expected[0]["input"] = pictures[2].name  # the CLI names the path, the server the upload
    assert answer.json() == expected
    assert refused.status_code == 400 and "threshold" in refused.text and "less than or equal to 1" in refused.text


# ---------------------------------------------------------------- the other families (slow)


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["yolos-tiny", "rtdetr-r18"])
def test_other_families_export_verify_and_predict(alias: str, registry: Any, tmp_path: Path,
                                                  pictures: list[Path]) -> None:
    import zoo

    folder = tiny.tiny_hf_folder(registry.get(alias), tmp_path / alias)
    artifact = make_artifact(folder, tmp_path / "art")
    checks = json.loads((artifact / "manifest.json").read_text())["verification"]["checks"]
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    found = zoo.load(artifact).predict([str(p) for p in pictures[:2]], threshold=0.0)
    assert [r.size for r in found] == list(SIZES[:2]) and all(len(r) for r in found)


# ---------------------------------------------------------------- zoo predict


def test_predict_json(detr_artifact: Path, pictures: list[Path]) -> None:
    done = runner.invoke(app, ["predict", str(detr_artifact), str(pictures[0]), "--json", "--threshold", "0.0"])
    assert done.exit_code == 0, done.output
    (result,) = json.loads(done.output)
    assert (result["height"], result["width"]) == SIZES[0] and len(result["detections"]) == 10
    assert set(result["detections"][0]) == {"label", "label_id", "score", "box"}
    assert result["detections"][0]["label"] in tiny.SHAPE_LABELS


def test_predict_save_draws_the_boxes(detr_artifact: Path, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    done = runner.invoke(app, ["predict", str(detr_artifact), str(pictures[1]), "--threshold", "0.0",
                               "--save", str(out)])
    assert done.exit_code == 0, done.output
    assert "box (x0, y0, x1, y1)" in done.output and f"saved {out}" in done.output.replace("\n", "")
    drawn, original = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(pictures[1]).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any(axis=-1).mean() > 0.01


def test_predict_save_to_a_folder_names_each_picture(detr_artifact: Path, pictures: list[Path],
                                                     tmp_path: Path) -> None:
    done = runner.invoke(app, ["predict", str(detr_artifact), *map(str, pictures), "--threshold", "0.5",
                               "--save", str(tmp_path / "drawn")])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["scene0.png", "scene1.png", "scene2.png"]


def test_save_beside_out_still_draws_the_pictures(detr_artifact: Path, pictures: list[Path], tmp_path: Path) -> None:
    """--out streams rows to a file; --save given with it must not be dropped."""
    rows, drawn = tmp_path / "rows.jsonl", tmp_path / "drawn"
    done = runner.invoke(app, ["predict", str(detr_artifact), *map(str, pictures), "--threshold", "0.5",
                               "--out", str(rows), "--save", str(drawn)])
    assert done.exit_code == 0, done.output
    assert len(rows.read_text().splitlines()) == len(pictures)
    assert sorted(p.name for p in drawn.iterdir()) == ["scene0.png", "scene1.png", "scene2.png"]


def test_save_to_one_file_with_several_inputs_is_refused(detr_artifact: Path, pictures: list[Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "predict", str(detr_artifact), *map(str, pictures[:2]), "--save",
                     str(tmp_path / "out.png"))
    assert code == 1 and "names one picture but 2 inputs" in err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- bad pictures at run time


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


def _one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), (255, 0, 0)).save(path)


@pytest.mark.parametrize(("make", "message"), [
    (_corrupt, "is not an image Pillow can read"),
    (_one_pixel, "the image is 1x1 pixels; object detection needs at least"),
])
def test_bad_picture_is_one_line_and_nothing_is_saved(make: Any, message: str, detr_artifact: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    make(bad)
    code, err = _cli(capsys, "predict", str(detr_artifact), str(bad), "--save", str(tmp_path / "drawn"))
    assert code == 1 and message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "drawn").exists()


def _cmyk(path: Path) -> Path:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
    return path.with_suffix(".jpg")


def _sixteen_bit(path: Path) -> Path:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(path.with_name("wide.png"))
    return path.with_name("wide.png")


@pytest.mark.parametrize("convert", [_cmyk, _sixteen_bit])
def test_cmyk_and_16_bit_pictures_are_read_as_rgb(convert: Any, detr_artifact: Path, pictures: list[Path],
                                                  tmp_path: Path) -> None:
    import zoo

    path = convert(Path(shutil.copy(pictures[0], tmp_path / "p.png")))
    assert Image.open(path).mode in ("CMYK", "I;16", "I")
    (found,) = zoo.load(detr_artifact).predict([str(path)], threshold=0.0)
    assert found.size == SIZES[0] and len(found) == 10


def test_threshold_outside_zero_one_is_refused(detr_artifact: Path, pictures: list[Path]) -> None:
    import zoo

    with pytest.raises(InputError, match="threshold=1.5; give a score between 0 and 1"):
        zoo.load(detr_artifact).predict([str(pictures[0])], threshold=1.5)


def test_zoo_optimize_refuses_a_detector_and_writes_nothing(detr_artifact: Path, tmp_path: Path) -> None:
    from exporters.optimize import optimize

    with pytest.raises(UnsupportedTaskError, match="does not judge object detectors"):
        optimize(detr_artifact, out=tmp_path / "fast")
    assert not (tmp_path / "fast").exists()


# ---------------------------------------------------------------- bad COCO data


def write_coco(folder: Path, annotations: list[dict[str, Any]], *, pictures: int = 4) -> Path:
    """A COCO folder (images/ + instances.json) of 64x64 pictures with categories 1 (circle) and 2 (square)."""
    (folder / "images").mkdir(parents=True)
    images = []
    for i in range(pictures):
        Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 64})
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return folder


def _box(i: int, image: int, bbox: list[float], category: int = 1) -> dict[str, Any]:
    return {"id": i, "image_id": image, "bbox": bbox, "category_id": category, "area": bbox[2] * bbox[3],
            "iscrowd": 0}


def _prepare(folder: Path, model: Path) -> Any:
    from zoo.train.data import prepare_data
    from zoo.resolver import resolve

    return prepare_data(str(folder), resolve(str(model)), val_fraction=0.25)


def test_pictures_without_boxes_are_valid_examples(detr_folder: Path, tmp_path: Path) -> None:
    data = _prepare(write_coco(tmp_path / "coco", [_box(1, 0, [4, 4, 20, 20]), _box(2, 1, [8, 8, 30, 20], 2)]),
                    detr_folder)
    targets = data.train.targets + data.val.targets
    assert sorted(len(t.boxes) for t in targets) == [0, 0, 1, 1]
    assert data.labels == tiny.SHAPE_LABELS  # the data's categories are among the model's: head kept


def test_boxes_reaching_outside_the_picture_are_clipped(detr_folder: Path, tmp_path: Path) -> None:
    data = _prepare(write_coco(tmp_path / "coco", [_box(1, i, [50, -6, 30, 20]) for i in range(4)]), detr_folder)
    assert {t.boxes for t in data.train.targets} == {((50.0, 0.0, 14.0, 14.0),)}


@pytest.mark.parametrize(("annotation", "message"), [
    (_box(1, 0, [70, 70, 10, 10]), "lies wholly outside the 64x64 picture"),
    (_box(1, 0, [4, 4, 10, 10], category=7), "has category_id 7; the categories are 1 (circle), 2 (square)"),
    (_box(1, 0, [4, 4, -3, 10]), "both must be positive"),
])
def test_bad_coco_annotation_is_one_line_and_no_run_dir(annotation: dict[str, Any], message: str,
                                                        detr_folder: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = write_coco(tmp_path / "coco", [annotation])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _prepare(data, detr_folder)
    code, err = _cli(capsys, "finetune", str(detr_folder), "--data", str(data), "--out", str(tmp_path / "run"),
                     "--max-steps", "1", "--no-progress")
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_corrupt_training_picture_is_named(detr_folder: Path, tmp_path: Path) -> None:
    data = write_coco(tmp_path / "coco", [_box(1, 0, [4, 4, 20, 20])])
    _corrupt(data / "images" / "2.png")
    with pytest.raises(DataError, match=r"\(.*2\.png\): the picture cannot be decoded"):
        _prepare(data, detr_folder)


def test_builtin_shapes_reads_in_the_hf_layout(detr_folder: Path) -> None:
    """builtin:shapes is a DatasetDict of image + objects {bbox, category}: the HF object-detection layout."""
    from zoo.train.data import prepare_data
    from zoo.resolver import resolve

    data = prepare_data("builtin:shapes", resolve(str(detr_folder)))
    assert data.sizes == {"train": 480, "validation": 96} and data.labels == tiny.SHAPE_LABELS
    counts = [len(t.boxes) for t in data.train.targets]
    assert min(counts) == 0 and max(counts) == 3  # pictures without shapes are kept as examples
    batch = data.train.batch([0, 1, 2, 3])
    assert batch["pixel_values"].shape[0] == 4 and batch["pixel_mask"].shape == batch["pixel_values"][:, 0].shape
    boxes = np.concatenate([label["boxes"].numpy() for label in batch["labels"]])
    assert len(boxes) == sum(counts[:4]) and ((boxes >= 0) & (boxes <= 1)).all()  # centre format, relative


def test_training_boxes_are_relative_to_each_picture_not_the_padded_batch(detr_folder: Path) -> None:
    """The loss sees boxes as post-processing reads them: relative to the picture's own size, whatever the padding."""
    from zoo.train.data import prepare_data
    from zoo.resolver import resolve

    data = prepare_data("builtin:shapes", resolve(str(detr_folder)))
    rows = [i for i, t in enumerate(data.train.targets) if t.boxes][:8]
    assert len({data.train.targets[i].size for i in rows}) > 1  # several picture sizes share the batch
    batch = data.train.batch(rows)
    for label, target in zip(batch["labels"], batch["targets"]):
        height, width = target.size
        cx, cy, w, h = label["boxes"].numpy()[0] * np.array([width, height, width, height])
        x, y, bw, bh = target.boxes[0]
        np.testing.assert_allclose([cx - w / 2, cy - h / 2, w, h], [x, y, bw, bh], atol=0.5)
