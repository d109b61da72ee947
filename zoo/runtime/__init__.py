"""The torch-free runtime: ``load(artifact_dir) -> ExportedModel`` (onnxruntime or OpenVINO, numpy, tokenizers, Pillow).

    import zoo
    model = zoo.load("artifacts/minilm")
    model.predict("a sentence").vector

Layer: above the tasks and sources (it asks the manifest's task how to pre- and postprocess),
below train/exporters and the entry points, which it never imports (README "Architecture").
"""

from __future__ import annotations

from zoo.runtime.generate import Generation
from zoo.runtime.model import ExportedModel, load
from zoo.tasks.results import Classification, Embedding, Entity, Prediction, TokenClassification

__all__ = ["Classification", "Embedding", "Entity", "ExportedModel", "Generation", "Prediction", "TokenClassification",
           "load"]
