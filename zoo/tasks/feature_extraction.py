"""feature-extraction: text embeddings (sentence-transformers folders, or a bare encoder's hidden states).

    zoo export ./all-MiniLM-L6-v2 --onnx      # transformer + pooling + normalise in one graph
    zoo predict artifacts/minilm "A man is eating food." "A man is eating bread."

A sentence-transformers folder exports its whole pipeline (the model's own
pooling and L2 normalisation) as ``embeddings`` [batch, dim]; a plain encoder
exports ``last_hidden_state`` [batch, sequence, dim]. Verification compares
cosine similarity per row (or per real token).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._text import TextTask
from zoo.tasks._vectors import cosines
from zoo.tasks.base import Case

POOLINGS = ("mean", "cls", "max", "lasttoken")


class CosineAgreement:
    """Minimum cosine similarity of torch and onnxruntime vectors over the grid."""

    def __init__(self, output: str, tol: Tolerances):
        self.output, self.tol = output, tol
        self.rows, self.min_cos, self.broken = 0, 1.0, 0

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        ref, out = reference[self.output], got.get(self.output, np.empty(0))
        if ref.shape != out.shape:
            self.broken += 1
            return
        values = cosines(ref, out, case.inputs.get("attention_mask"))
        self.rows += len(values)
        if len(values):
            self.min_cos = min(self.min_cos, float(np.nan_to_num(values.min(), nan=-1.0)))

    def check(self) -> Check:
        ok = self.min_cos >= self.tol.cosine and self.rows > 0 and not self.broken
        return Check("cosine similarity", ok, f"min {self.min_cos:.6f}", f">= {self.tol.cosine:g}",
                     f"{self.rows} vectors" + (f", {self.broken} cases of the wrong shape" if self.broken else ""))


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers pooling in numpy (used when the graph returns per-token states)."""
    m = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(1)
    if mode == "lasttoken":
        last = np.maximum(mask.sum(1).astype(np.int64) - 1, 0)
        return hidden[np.arange(hidden.shape[0]), last]
    raise ArtifactError(f"pooling '{mode}' in the manifest; valid: {', '.join(POOLINGS)}")


class FeatureExtraction(TextTask):
    name: ClassVar[str] = "feature-extraction"
    summary: ClassVar[str] = "text embeddings (pooled and normalised as the model's own config says)"
    hf_auto_class: ClassVar[str | None] = "AutoModel"
    hf_priority: ClassVar[int] = -1  # a head task claiming the same config wins

    def claims_hf(self, architectures: list[str], model_type: str, sentence_transformers: bool) -> bool:
        from zoo.tasks._modality import hf_modality

        if sentence_transformers:
            return True
        # an encoder without a task head: XModel, XForMaskedLM, XForPreTraining (or no architectures at all)
        bare = [a for a in architectures if (a.endswith("Model") and "For" not in a and "LMHead" not in a)
                or a.endswith(("ForMaskedLM", "ForPreTraining"))]
        return hf_modality(model_type) == "text" and (bool(bare) or not architectures)

    def adapt_model(self, model: Any, spec: ModelSpec) -> Any:
        if not spec.preprocess.pooling:
            return model
        from zoo.tasks._torch import SentenceEmbedder

        return SentenceEmbedder(model, spec.preprocess.pooling, spec.preprocess.normalize)

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("embeddings",) if spec.preprocess.pooling else ("last_hidden_state",)

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        if spec.preprocess.pooling:
            return {"embeddings": ["batch", None]}
        return {"last_hidden_state": ["batch", "sequence", None]}

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> CosineAgreement:
        return CosineAgreement(self.output_names(spec)[0], tol)

    # ------------------------------------------------------------ runtime

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks.results import Embedding

        output = next(iter(outputs.values()))
        if output.ndim != 3:
            return [Embedding(v) for v in output]
        mask = batch.arrays.get("attention_mask")
        if mask is None:
            raise ArtifactError("per-token output without an attention_mask input: cannot tell padding apart")
        pp = manifest.preprocess
        if pp.get("pooling"):
            pooled = pool(output, mask, pp["pooling"])
            if pp.get("normalize"):
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            return [Embedding(v) for v in pooled]
        return [Embedding(h[m.astype(bool)]) for h, m in zip(output, mask)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "shape", "norm", "first values"):
            table.add_column(column)
        for text, result in zip(inputs, results):
            head = ", ".join(f"{v:+.4f}" for v in result.vector.reshape(-1)[:4])
            table.add_row(escape(text), str(result.shape), f"{float((result.vector ** 2).sum()) ** 0.5:.4f}",
                          f"[{head}, ...]")
        return table

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """An embedding model fine-tunes as a text classifier: a classification head on its transformer."""
        import dataclasses

        pp = dataclasses.replace(spec.preprocess, pooling=None, normalize=False)
        return dataclasses.replace(spec, task="text-classification", preprocess=pp)


TASK = FeatureExtraction()
