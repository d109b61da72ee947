"""The memory plan of the verification grid (issue 22): estimated before a case runs, shrunk or refused, measured.

The wav2vec2 of the issue downsamples 20x instead of 320x: its grid's 30-second clips become
24000 frames, whose attention scores need some 27 GiB, and the kernel killed the export at 24 GB
with no message. Here it exports under a budget a little above the test process, its long clips
shortened and said so, or is refused in one line under a budget the process alone exceeds.
Memory of these tests stays under about 1 GiB above the test process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.memory import BUDGET_ENV, DEFAULT_BUDGET, budget, measure, plan_grid, resident, resets_allowed
from tests.test_bad_input_cli import refusal_problem
from zoo.errors import ConfigError
from zoo.spec import ModelSpec, Preprocess
from zoo.tasks import get_task
from zoo.tasks._audio import waveform_inputs
from zoo.tasks._image import image_inputs
from zoo.tasks._memory import (ACTIVATION_COPIES, ATTENTION_COPIES, CONV_COPIES, GIB, MIB, PIXEL_EXPANSION,
                               CaseMemory, ModelDims)
from zoo.tasks._text import text_inputs
from zoo.tasks.base import Case, Task

# the issue's folder: a feature encoder of two convolutions, strides 5 and 4 (20x)
ISSUE_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
                    conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2, classifier_proj_size=16)
# what the test exports may hold above the test process: the plan's libraries (512 MiB) and a few cases
HEADROOM = 900 * MIB


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's folder: save_pretrained of a random Wav2Vec2ForSequenceClassification plus its feature extractor."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("wav2vec2-20x")
    config = transformers.Wav2Vec2Config(**ISSUE_CONFIG, num_labels=2, id2label={0: "no", 1: "yes"})
    torch.manual_seed(0)
    transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


def _spec(task: str, inputs: Any, preprocess: Preprocess, arch: str = "") -> ModelSpec:
    return ModelSpec(name=f"tiny-{task}", source="hf", source_id="tiny", task=task, arch=arch, inputs=inputs,
                     preprocess=preprocess)


WAVEFORM = _spec("audio-classification", waveform_inputs(False),
                 Preprocess(features="waveform", sampling_rate=16000, do_normalize=True, max_seconds=30.0), "wav2vec2")


# ---------------------------------------------------------------- the budget


@pytest.mark.parametrize("text, expected", [("", DEFAULT_BUDGET), ("8GiB", 8 * GIB), ("1.5 GiB", int(1.5 * GIB)),
                                            ("6000MiB", 6000 * MIB), ("12G", 12 * GIB), ("2147483648", 2 * GIB)])
def test_the_budget_is_read_from_the_environment(text: str, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, text)
    assert budget() == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "8 parsecs", "0", "512"])
def test_a_budget_that_is_no_size_is_one_line(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, text)
    with pytest.raises(ConfigError, match=f"{BUDGET_ENV}=") as info:
        budget()
    assert "\n" not in str(info.value) and "8GiB" in str(info.value)


# ---------------------------------------------------------------- the estimate, task by task


def _dims(**config: Any) -> ModelDims:
    from types import SimpleNamespace

    return ModelDims(weights=1000, heads=2, width=64, layers=2, config=SimpleNamespace(model_type="x", **config))


def _attention(batch: int, tokens: int, heads: int = 2) -> int:
    return batch * heads * tokens * tokens * 4 * ATTENTION_COPIES


def _activations(batch: int, tokens: int, width: int = 64) -> int:
    return batch * tokens * width * 4 * ACTIVATION_COPIES


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "feature-extraction"])
def test_text_attends_over_its_sequence(task: str) -> None:
    ids = np.zeros((3, 100), np.int64)
    case = Case("long", 0, {"input_ids": ids, "attention_mask": ids})
    terms = get_task(task).memory_terms(_spec(task, text_inputs(), Preprocess(max_length=128)), _dims(), case)
    assert terms == {"inputs": 2 * ids.nbytes, "attention": _attention(3, 100), "activations": _activations(3, 100)}


def test_a_waveform_attends_over_the_frames_its_feature_encoder_leaves() -> None:
    dims = _dims(conv_kernel=(10, 4), conv_stride=(5, 4), conv_dim=(16, 16))
    values = np.zeros((2, 16000), np.float32)
    terms = get_task("audio-classification").memory_terms(WAVEFORM, dims, Case("long", 0, {"input_values": values}))
    # (16000 - 10) // 5 + 1 = 3199 samples after the first convolution, (3199 - 4) // 4 + 1 = 799 frames
    assert terms["attention"] == _attention(2, 799) and terms["activations"] == _activations(2, 799)
    assert terms["feature encoder"] == 2 * 16 * 3199 * 4 * CONV_COPIES


def test_the_issue_clip_is_planned_at_gigabytes_not_megabytes() -> None:
    """30 s at 16 kHz, strides 5 and 4: 24000 frames; 320x (wav2vec2-base) would leave 1499."""
    values = np.zeros((2, 480000), np.float32)
    task = get_task("audio-classification")
    fast = task.memory_terms(WAVEFORM, _dims(conv_kernel=(10, 4), conv_stride=(5, 4), conv_dim=(16, 16)),
                             Case("long", 0, {"input_values": values}))
    base = task.memory_terms(WAVEFORM, _dims(conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                                             conv_dim=(16,) * 7), Case("long", 0, {"input_values": values}))
    assert fast["attention"] == _attention(2, 23999) > 20 * GIB
    assert base["attention"] == _attention(2, 1499) < GIB // 4


def test_a_filterbank_attends_over_its_patches() -> None:
    spec = _spec("audio-classification", (), Preprocess(features="fbank", sampling_rate=16000, num_mel_bins=32,
                                                        max_frames=128))
    dims = _dims(patch_size=16, time_stride=10, frequency_stride=10)
    terms = get_task("audio-classification").memory_terms(spec, dims, Case("s", 0, {"input_values": np.zeros(
        (1, 128, 32), np.float32)}))
    # (128 - 16) // 10 + 1 = 12 along time, (32 - 16) // 10 + 1 = 2 along frequency, plus two tokens
    assert terms["attention"] == _attention(1, 26)


@pytest.mark.parametrize("task", ["image-classification", "image-feature-extraction"])
def test_an_image_is_feature_maps_or_patches(task: str) -> None:
    spec = _spec(task, image_inputs((3, 64, 96)), Preprocess(input_size=(3, 64, 96)))
    pixels = {"pixel_values": np.zeros((3, 3, 64, 96), np.float32)}
    cnn = get_task(task).memory_terms(spec, ModelDims(weights=1000, width=512), Case("image", 0, pixels))
    assert cnn == {"inputs": pixels["pixel_values"].nbytes, "feature maps": 3 * 3 * 64 * 96 * 4 * PIXEL_EXPANSION}
    vit = get_task(task).memory_terms(spec, ModelDims(weights=1000, heads=2, width=64, patch=16), Case("i", 0, pixels))
    assert vit["attention"] == _attention(3, 4 * 6 + 1)  # 4 x 6 patches of 16 px and the class token


def test_a_detector_adds_its_encoder_tokens_and_queries() -> None:
    spec = _spec("object-detection", (), Preprocess(), "detr")
    pixels = {"pixel_values": np.zeros((2, 3, 64, 96), np.float32), "pixel_mask": np.ones((2, 64, 96), np.int64)}
    detr = get_task("object-detection").memory_terms(spec, _dims(num_queries=10), Case("mixed", 0, pixels))
    tokens = 2 * 3  # the stride-32 map of 64 x 96 pixels
    assert detr["attention"] == _attention(2, tokens)
    assert detr["queries"] == 2 * 10 * (2 * (10 + tokens) * ATTENTION_COPIES + 64 * ACTIVATION_COPIES) * 4
    assert detr["feature maps"] == 2 * 3 * 64 * 96 * 4 * PIXEL_EXPANSION
    yolos = get_task("object-detection").memory_terms(spec, ModelDims(1000, heads=2, width=64, patch=16, config=_dims(
        num_detection_tokens=10).config), Case("mixed", 0, pixels))
    assert yolos["attention"] == _attention(2, 4 * 6 + 1 + 10) and "queries" not in yolos


def test_a_task_that_knows_nothing_more_counts_every_element() -> None:
    case = Case("x", 0, {"values": np.zeros((2, 50), np.float32)})
    assert Task().memory_terms(_spec("x", (), Preprocess()), _dims(), case)["attention"] == _attention(2, 50)


def test_a_cache_is_one_more_term() -> None:
    """How the causal-LM task to come adds its KV cache: one more term beside its modality's."""
    class CachedText(type(get_task("text-classification"))):  # type: ignore[misc]
        def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
            batch, tokens = case.inputs["input_ids"].shape
            cache = 2 * dims.layers * batch * tokens * dims.width * dims.itemsize
            return {**super().memory_terms(spec, dims, case), "kv cache": cache}

    case = Case("long", 0, {"input_ids": np.zeros((1, 10), np.int64)})
    terms = CachedText().memory_terms(_spec("text-classification", text_inputs(("input_ids",)), Preprocess()),
                                      _dims(), case)
    assert terms["kv cache"] == 2 * 2 * 10 * 64 * 4 and CaseMemory(terms).estimate == sum(terms.values())


def test_model_dims_are_read_from_the_module(wav2vec2_folder: Path) -> None:
    import timm
    import transformers

    wav2vec2 = ModelDims.of(transformers.Wav2Vec2ForSequenceClassification.from_pretrained(wav2vec2_folder))
    assert (wav2vec2.heads, wav2vec2.width, wav2vec2.layers, wav2vec2.itemsize) == (2, 64, 2, 4)
    assert wav2vec2.setting("conv_stride") == [5, 4] and wav2vec2.patch == 0
    vit = ModelDims.of(timm.create_model("test_vit", pretrained=False))
    assert vit.heads > 0 and vit.patch > 0 and vit.config is None
    resnet = ModelDims.of(timm.create_model("test_resnet", pretrained=False))
    assert resnet.heads == 0 and resnet.weights > 0


# ---------------------------------------------------------------- shrinking


def test_a_long_clip_is_shortened_and_stays_what_the_runtime_makes() -> None:
    from transformers import Wav2Vec2FeatureExtractor

    from zoo.tasks._audio import AudioPreprocessor, AudioSettings

    task, processor = get_task("audio-classification"), Wav2Vec2FeatureExtractor()
    long = task.grid(WAVEFORM, processor, (0,))[-1]
    assert long.inputs["input_values"].shape == (2, 480000)
    shorter = task.shrink_case(WAVEFORM, processor, long)
    assert shorter is not None and shorter.inputs["input_values"].shape == (2, 360000)
    runtime = AudioPreprocessor.from_settings(AudioSettings.from_spec(WAVEFORM))(shorter.raw).arrays
    np.testing.assert_allclose(runtime["input_values"], shorter.inputs["input_values"], atol=1e-4)
    smallest = long
    while (smaller := task.shrink_case(WAVEFORM, processor, smallest)) is not None:
        smallest = smaller
    assert smallest.inputs["input_values"].shape == (1, 16000)  # one clip of the export's 1 s


def test_a_long_text_is_cut_at_a_word_and_the_tokenizer_still_makes_its_ids() -> None:
    from transformers import AutoTokenizer

    from tests.tiny import minilm_dir
    from zoo.tasks._text import tokenize

    spec = _spec("text-classification", text_inputs(), Preprocess(max_length=128))
    task, tokenizer = get_task("text-classification"), AutoTokenizer.from_pretrained(minilm_dir())
    long = task.grid(spec, tokenizer, (0,))[-1]
    assert long.inputs["input_ids"].shape[1] == 128
    shorter = task.shrink_case(spec, tokenizer, long)
    assert shorter is not None and shorter.inputs["input_ids"].shape[1] <= 96
    again = tokenize(spec, tokenizer, shorter.texts, 128)  # what the artifact's tokenizer check compares
    assert all(np.array_equal(again[k], v) for k, v in shorter.inputs.items())


def test_an_image_batch_is_halved_down_to_one() -> None:
    task = get_task("image-classification")
    spec = _spec("image-classification", image_inputs((3, 32, 32)), Preprocess(input_size=(3, 32, 32)))
    case = task.grid(spec, None, (0,))[-1]
    sizes = []
    while case is not None:
        sizes.append(case.inputs["pixel_values"].shape[0])
        case = task.shrink_case(spec, None, case)
    assert sizes == [3, 2, 1]


# ---------------------------------------------------------------- planning and refusing


def _issue_source(folder: Path) -> Any:
    from exporters.source import build_source
    from zoo.resolver import resolve

    return build_source(resolve(str(folder)))


def test_the_plan_shrinks_what_does_not_fit_and_says_so(wav2vec2_folder: Path) -> None:
    source = _issue_source(wav2vec2_folder)
    said: list[str] = []
    limit = resident() + HEADROOM
    planned = plan_grid(source.task, source.spec, source.module, source.processor, source.cases, limit, said.append)
    assert all(case.memory is not None and case.memory.estimate <= limit for case in planned)
    long = [case for case in planned if case.kind == "long"]
    assert len(long) == 3 and all(case.memory.shrunk.startswith("2x480000 -> 2x") for case in long)
    assert len(said) >= 3 and "over the" in said[0] and BUDGET_ENV in said[0]


def test_a_budget_below_the_smallest_case_is_refused_in_one_line(wav2vec2_folder: Path) -> None:
    source = _issue_source(wav2vec2_folder)
    with pytest.raises(ConfigError, match="even at its smallest") as info:
        plan_grid(source.task, source.spec, source.module, source.processor, source.cases, 256 * MIB)
    assert "\n" not in str(info.value) and f"{BUDGET_ENV}=" in str(info.value)


def test_zoo_export_refuses_in_one_line_and_writes_nothing(wav2vec2_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    monkeypatch.setenv(BUDGET_ENV, "512MiB")  # the process alone holds more
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["export", str(wav2vec2_folder), "--onnx", "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    # the stage lines come first (stderr is not a terminal here); the refusal is the one error line after them
    lines = [line for line in err.splitlines() if not line.startswith("zoo export: ")]
    assert refusal_problem(info.value.code, "\n".join(lines), "512 MiB budget") is None, err
    assert list(tmp_path.iterdir()) == [], "a refused export wrote files"


def test_the_noise_floor_leaves_out_a_float64_run_over_the_budget() -> None:
    from exporters.verify import NoiseFloor

    inputs = {"input_values": np.zeros((1, 16000), np.float32)}
    big = Case("long", 0, inputs, memory=CaseMemory({"process": 6 * GIB, "weights": GIB, "attention": 2 * GIB},
                                                    budget=8 * GIB))
    small = Case("short", 0, inputs, memory=CaseMemory({"process": GIB, "attention": GIB}, budget=8 * GIB))
    # no module: a float64 run that is tried fails, which shows that it was tried
    floor = NoiseFloor(None, WAVEFORM, [big, small], [{}, {}])
    assert floor.measure([0]) == {} and not floor.problem
    assert "a float64 run needs ~11.0 GiB, over the 8.0 GiB memory budget" in floor.over_budget[0]
    assert floor.measure([1]) == {} and "does not run in float64" in floor.problem  # the twin: it fits, it ran


# ---------------------------------------------------------------- measuring


def _resident_block(size: int) -> Any:
    """Anonymous pages, each written (so resident) and returned to the system on close: no allocator keeps them
    for reuse, which would make a test's peak depend on what ran before it in this process."""
    import mmap

    block = mmap.mmap(-1, size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


def test_the_peak_of_a_case_is_measured_and_reset_between_cases() -> None:
    import gc

    gc.collect()  # what earlier tests left for the collector is not freed in the middle of this one
    case = Case("x", 0, {"x": np.zeros(1)}, memory=CaseMemory({}))
    before = resident()
    with measure(case, "torch"):
        block = _resident_block(128 * MIB)
        during = resident()
        block.close()
    # the kernel's counters are synced lazily: the high-water mark may trail the resident set by a few pages
    assert during >= before + 120 * MIB and case.memory.peaks["torch"] >= during - 4 * MIB
    if resets_allowed():
        quiet = Case("x", 0, {"x": np.zeros(1)}, memory=CaseMemory({}))
        with measure(quiet, "torch"):
            pass
        assert quiet.memory.peaks["torch"] < case.memory.peaks["torch"] - 100 * MIB


@pytest.mark.slow
def test_the_issue_folder_exports_within_a_budget(wav2vec2_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Exported under a budget a little above this process: long clips shortened, every peak within the
    budget and within its estimate, the figures in the manifest; --against-source plans the same way."""
    from exporters.onnx import export_onnx
    from exporters.verify import verify_artifact

    limit = resident() + HEADROOM
    monkeypatch.setenv(BUDGET_ENV, f"{limit // MIB}MiB")
    stages: list[str] = []
    result = export_onnx(str(wav2vec2_folder), out=tmp_path / "w2v", progress=stages.append)
    assert result.report.passed
    assert any(s.startswith("memory plan: case 'long [2x480000]") and "instead" in s for s in stages), stages
    memory = json.loads((result.path / "manifest.json").read_text())["verification"]["memory"]
    assert memory["budget_mib"] == limit // MIB and "VmHWM" in memory["measures"] and len(memory["cases"]) == 9
    for row in memory["cases"]:
        peak = max(row["torch_peak_mib"], row["onnxruntime_peak_mib"])
        assert peak <= memory["budget_mib"] and peak <= row["estimate_mib"], row
    assert sum("shrunk" in row for row in memory["cases"]) >= 3
    monkeypatch.setenv(BUDGET_ENV, f"{(resident() + HEADROOM) // MIB}MiB")  # the export's libraries stay loaded
    again = verify_artifact(result.path, against_source=True)
    assert again.passed and len(again.memory["cases"]) == 9


def test_the_commands_peak_survives_the_per_case_resets():
    """The stage line's 'peak memory' is the whole command's, though each grid case resets the kernel's counter."""
    from exporters import memory

    block = _resident_block(64 * MIB)
    before = memory.peak()
    block.close()
    if not memory._reset_peak():
        pytest.skip("this kernel does not let a process reset its high-water mark")
    # the kernel's counters are synced lazily, so each figure may be off by a few pages
    assert memory.peak() < before - 32 * MIB  # the counter went back down ...
    assert memory.lifetime_peak() >= before - 4 * MIB  # ... and the command's peak did not
