"""image-feature-extraction: image embeddings from a backbone without its head (timm or transformers).

    zoo export convnext_tiny-embed --onnx --random-init --out artifacts/convnext-embed
    zoo predict artifacts/convnext-embed a.jpg b.jpg      # embedding shape + cosine similarity matrix

A timm model is built with ``num_classes=0`` (its forward then ends in the pooled
pre-logits features, ``forward_head(forward_features(x), pre_logits=True)``); a
transformers vision backbone (a bare ``XModel`` config) gives its pooled output.
With ``preprocess.normalize`` the graph L2-normalises the embedding, and the
manifest records it. Verification compares cosine similarity per row and the
max abs difference. Fine-tuning hands over to image-classification (a head on
the backbone).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._image import ImageTask
from zoo.tasks.feature_extraction import CosineAgreement


class ImageFeatureExtraction(ImageTask):
    name: ClassVar[str] = "image-feature-extraction"
    summary: ClassVar[str] = "image embeddings (a backbone's pooled features, optionally L2-normalised)"
    hf_auto_class: ClassVar[str | None] = "AutoModel"
    hf_priority: ClassVar[int] = -1  # a head task claiming the same config wins
    timm: ClassVar[bool] = True

    def claims_hf(self, architectures: list[str], model_type: str, sentence_transformers: bool) -> bool:
        from zoo.tasks._modality import hf_modality

        bare = [a for a in architectures if a.endswith("Model") and "For" not in a]
        return not sentence_transformers and hf_modality(model_type) == "image" and bool(bare)

    def timm_kwargs(self, spec: ModelSpec) -> dict[str, Any]:
        return {"num_classes": 0}  # no classifier: forward returns the pooled pre-logits features

    def adapt_model(self, model: Any, spec: ModelSpec) -> Any:
        from zoo.tasks._embed_torch import ImageEmbedder

        return ImageEmbedder(model, spec.preprocess.normalize)

    # ------------------------------------------------------------ export and verify

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("embeddings",)

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> CosineAgreement:
        return CosineAgreement("embeddings", tol)

    # ------------------------------------------------------------ runtime

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks.results import Embedding

        return [Embedding(v) for v in outputs["embeddings"]]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        """Each input's embedding shape and norm, and the cosine similarity of every pair."""
        from rich.markup import escape
        from rich.table import Table

        vectors = np.stack([r.vector for r in results]).astype(np.float64) if results else np.zeros((0, 0))
        similarity = similarity_matrix(vectors)
        table = Table(title=f"{title}: embeddings {tuple(vectors.shape[1:])}, cosine similarity")
        for column in ("#", "input", "norm", *(f"#{j + 1}" for j in range(len(results)))):
            table.add_column(column, justify="left" if column == "input" else "right")
        for i, (item, vector) in enumerate(zip(inputs, vectors)):
            table.add_row(str(i + 1), escape(item), f"{float(np.linalg.norm(vector)):.4f}",
                          *(f"{c:+.4f}" for c in similarity[i]))
        return table

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """An embedder fine-tunes as an image classifier: a classification head on its backbone."""
        pp = dataclasses.replace(spec.preprocess, normalize=False)
        return dataclasses.replace(spec, task="image-classification", preprocess=pp)


def similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows (a zero vector is similar to nothing)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    return unit @ unit.T


TASK = ImageFeatureExtraction()
