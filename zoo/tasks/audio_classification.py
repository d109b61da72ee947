"""audio-classification: one label per clip (wav2vec2 / HuBERT sequence classifiers, the Audio Spectrogram Transformer).

    zoo finetune wav2vec2-ks --data ./clips/ --out runs/keywords     # clips/<label>/<clip>.wav
    zoo export runs/keywords --onnx --out artifacts/keywords
    zoo predict artifacts/keywords yes.wav --top-k 3

Clips are read with soundfile, mixed to mono, resampled with soxr to the model's
rate and turned into the model's inputs in numpy (see ``_audio.py``), the same
way for training and at run time. Validation reports accuracy and macro F1.
"""

from __future__ import annotations

from typing import Any, ClassVar

from zoo.spec import ModelSpec
from zoo.tasks._audio import AudioSettings, AudioTask
from zoo.tasks._classify import LABEL_COLUMNS, Classifier
from zoo.tasks.base import choose_column


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

    def encode(self, table: Any, columns: dict[str, str], labels: tuple[str, ...], spec: ModelSpec,
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
