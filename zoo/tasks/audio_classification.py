"""audio-classification: one label per clip (wav2vec2 / HuBERT sequence classifiers, the Audio Spectrogram Transformer).

    zoo finetune wav2vec2-ks --data ./clips/ --out runs/keywords     # clips/<label>/<clip>.wav
    zoo export runs/keywords --onnx --out artifacts/keywords
    zoo predict artifacts/keywords yes.wav --top-k 3

Clips are read with soundfile, mixed to mono, resampled with soxr to the model's
rate and turned into the model's inputs in numpy (see ``_audio.py``), the same
way for training and at run time. Validation reports accuracy and macro F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from zoo.tasks.results import Classification
from zoo.spec import ModelSpec
from zoo.tasks._audio import AudioSettings, AudioTask
from zoo.tasks._classify import LABEL_COLUMNS, Classifier
from zoo.tasks.base import choose_column


@dataclass(frozen=True)
class ClipClassification(Classification):
    """The top-k labels of one clip, its length, and a note when the model heard only its start."""

    seconds: float = 0.0  # the clip as given
    window: float = 0.0  # what the model hears of it

    @property
    def note(self) -> str | None:
        if self.seconds <= self.window + 1e-6:
            return None
        return (f"clip is {self.seconds:.2f} s; the model hears its first {self.window:.2f} s (truncated as its "
                "feature extractor truncates)")

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "seconds": round(self.seconds, 4)}
        return {**out, "note": self.note} if self.note else out


class AudioClassification(Classifier, AudioTask):
    name: ClassVar[str] = "audio-classification"
    summary: ClassVar[str] = "one label per audio clip"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForSequenceClassification", "ForAudioClassification")
    hf_auto_class: ClassVar[str | None] = "AutoModelForAudioClassification"

    def adapt_model(self, model: Any, spec: ModelSpec) -> Any:
        # LayerDrop (wav2vec2 and kin, 0.1 by default) skips random layers per process while training,
        # so DDP would wait for gradients of layers another rank skipped. zoo trains every layer;
        # inference never drops any, so exported models are unchanged.
        config = getattr(model, "config", None)
        if getattr(config, "layerdrop", 0.0):
            config.layerdrop = 0.0
        return model

    # ------------------------------------------------------------ runtime

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        results = super().postprocess(outputs, batch, labels, manifest, **options)
        return [ClipClassification(r.labels, r.scores, seconds=seconds, window=batch.window)
                for r, seconds in zip(results, batch.durations)]

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        table = super().render(title, inputs, results)
        notes = [f"{item}: {r.note}" for item, r in zip(inputs, results) if r.note]
        if notes:
            from rich.markup import escape

            table.caption = escape("\n".join(notes))
        return table

    # ------------------------------------------------------------ data

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._audio_data import tones

        return {"tones": tones}

    def read_data(self, data: str) -> dict[str, Any] | None:
        from zoo.tasks._audio_data import read_audio_data

        return read_audio_data(data)

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._audio_data import audio_column

        audio = audio_column(table, input_column)
        usual = [n for n in LABEL_COLUMNS if n != audio]
        return {"input": audio, "label": choose_column(list(table.column_names), label_column, usual, "label",
                                                       "--label-column")}

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        from zoo.tasks._audio_data import encode_clips

        return encode_clips(table, columns, labels, AudioSettings.from_spec(spec), what)

    # ------------------------------------------------------------ training

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        import numpy as np
        import torch

        # wav2vec2's SpecAugment draws its masks from numpy's global generator; seed it from the
        # per-micro-step torch seed so that a resumed run masks exactly the same frames
        np.random.seed(torch.initial_seed() % 2**32)
        return super().training_loss(runner, batch, inputs)


TASK = AudioClassification()
