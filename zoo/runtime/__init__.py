"""The torch-free runtime: ``load(artifact_dir) -> ExportedModel`` (onnxruntime, numpy, tokenizers, Pillow).

    import zoo
    model = zoo.load("artifacts/minilm")
    model.predict("a sentence").vector
"""

from __future__ import annotations

from zoo.runtime.model import ExportedModel, load
from zoo.runtime.results import Classification, Embedding, Entity, Prediction, TokenClassification

__all__ = ["Classification", "Embedding", "Entity", "ExportedModel", "Prediction", "TokenClassification", "load"]
