"""CUDA checks: bf16 training steps through NCCL (single, DDP, FSDP2) and export parity of what they trained.

Skipped on machines without a CUDA device (CI has none); run on a GPU machine with

    .venv/bin/pytest tests/test_gpu.py -m gpu -v
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _run(strategy: str, out: Path, model: str = "timm:test_resnet", data: str = "builtin:digits",
         **options: object) -> dict:
    from zoo.train.finetune import finetune

    settings = dict(random_init=True, strategy=strategy, nproc=1, precision="bf16", max_steps=40, batch_size=64,
                    lr=3e-3, image_size=32, eval_every=20, progress=False)
    finetune(model, data, out=out, **{**settings, **options})
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp"])
def test_bf16_cnn_trains_on_cuda_and_its_export_matches(strategy: str, tmp_path: Path) -> None:
    """A CNN (batch norm) in bf16 on the GPU learns digits; the fp32 weights it saves export and verify."""
    from exporters.onnx import export_onnx

    record = _run(strategy, tmp_path / "run")
    assert record["world_size"] == 1 and record["strategy"] == strategy
    first, final = _metrics(tmp_path / "run")
    assert final["val_accuracy"] > 0.5 and final["val_loss"] < first["val_loss"], (first, final)
    result = export_onnx(str(tmp_path / "run"), out=tmp_path / "artifact")
    assert result.report.passed
    _cuda_parity(tmp_path / "run", tmp_path / "artifact")


def test_bf16_fsdp_transformer_on_cuda(tiny_text_classifier: Path, tmp_path: Path) -> None:
    """FSDP2 mixed precision (bf16 compute, fp32 reduce) on a transformer, through NCCL."""
    from tests.test_data import ROWS, write_rows

    data = write_rows(tmp_path / "train.csv", ROWS * 4, "csv")
    record = _run("fsdp", tmp_path / "run", model=str(tiny_text_classifier), data=str(data), random_init=False,
                  batch_size=8, max_steps=10, eval_every=5, image_size=None, lr=1e-3)
    assert np.isfinite(record["metrics"]["final"]["val_loss"])


def _metrics(run: Path) -> tuple[dict, dict]:
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in json.loads(line)]
    return evals[0], evals[-1]


def _cuda_parity(run: Path, artifact: Path) -> None:
    """The trained weights on the GPU in fp32 vs the artifact under onnxruntime, on the golden inputs."""
    from exporters.golden import golden_sets, read_golden
    from zoo.create import create_model
    from zoo.resolver import resolve
    from zoo.runtime import load
    from zoo.tasks import get_task

    spec = resolve(str(run))
    model, _ = create_model(spec)
    module = get_task(spec.task).export_module(model, spec).cuda().eval()
    exported = load(artifact)
    for data_set in golden_sets(artifact):
        inputs, _ = read_golden(data_set)
        with torch.no_grad():
            expected = module(**{k: torch.from_numpy(v).cuda() for k, v in inputs.items()}).float().cpu().numpy()
        got = exported(**inputs)[exported.output_name]
        # cuDNN convolutions are not bit-identical to onnxruntime's CPU kernels: allclose with the spec's
        # tolerances, scaled for the GPU's TF32-free fp32 path
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
        assert (got.argmax(-1) == expected.argmax(-1)).all()
