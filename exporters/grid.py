"""The verification grid: inputs that differ from the export shapes, several seeds.

Export traces batch 2 (and 16 tokens for text); the grid checks batch 1 and
batch 3, and for text a short sentence, a padded batch of real sentences, and a
batch whose longest row reaches the model's max length, all made by the
model's own tokenizer. Each seed picks different sentences (or pixels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.spec import ModelSpec, Preprocess

EXPORT_BATCH = 2
EXPORT_SEQUENCE = 16
SEEDS = (0, 1, 2)
IMAGE_BATCHES = (1, 3)

# Real English sentences of varied length; the tokenizer turns them into ids.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film.",
    "The service was slow, the food was cold, and nobody apologised for either.",
    "Paris is the capital of France.",
    "Barack Obama was born in Honolulu, Hawaii, and later moved to Chicago.",
    "What time does the train to Edinburgh leave tomorrow morning?",
    "Terrible.",
    "The committee will publish its final report on climate adaptation next spring, "
    "after consulting farmers, engineers and city planners across the region.",
    "Apple released a new laptop with a faster chip and a brighter screen.",
    "She read the letter twice before folding it carefully into her pocket.",
    "Rain is expected in the north-west by Thursday evening.",
    "My grandmother's recipe calls for three eggs, a cup of sugar and a pinch of salt.",
)


@dataclass(eq=False)
class Case:
    """One grid point: named numpy inputs (in the spec's input order) and how they were made."""

    kind: str  # short | padded | long | image
    seed: int
    inputs: dict[str, np.ndarray]
    texts: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        shape = "x".join(str(d) for d in next(iter(self.inputs.values())).shape)
        return f"{self.kind} [{shape}] seed {self.seed}"


def export_example(spec: ModelSpec, preprocess: Preprocess, tokenizer: Any | None) -> dict[str, np.ndarray]:
    """The inputs the exporter traces with: batch 2 (and 16 padded tokens for text)."""
    if spec.is_text:
        length = min(EXPORT_SEQUENCE, preprocess.max_length or EXPORT_SEQUENCE)
        return tokenize(spec, tokenizer, list(SENTENCES[:EXPORT_BATCH]), length, pad_to_max=True)
    return {spec.inputs[0].name: _pixels(preprocess, EXPORT_BATCH, seed=1234)}


def make_cases(spec: ModelSpec, preprocess: Preprocess, tokenizer: Any | None,
               seeds: tuple[int, ...] | None = None) -> list[Case]:
    seeds = SEEDS if seeds is None else seeds  # read at call time so a test can shrink the grid
    if spec.is_text:
        return [case for seed in seeds for case in _text_cases(spec, preprocess, tokenizer, seed)]
    name = spec.inputs[0].name
    return [Case("image", seed, {name: _pixels(preprocess, batch, seed)})
            for seed in seeds for batch in IMAGE_BATCHES]


def golden_indices(cases: list[Case], count: int = 3) -> list[int]:
    """One case per seed, rotating through the kinds, so the golden sets differ in shape."""
    by_seed: dict[int, list[int]] = {}
    for index, case in enumerate(cases):
        by_seed.setdefault(case.seed, []).append(index)
    picked = [group[i % len(group)] for i, group in enumerate(by_seed.values())]
    return picked[:count]


def _pixels(preprocess: Preprocess, batch: int, seed: int) -> np.ndarray:
    """Uniform pixels normalised with the model's mean/std: the range a real image has."""
    channels, height, width = preprocess.input_size or (3, 224, 224)
    rng = np.random.default_rng(seed)
    raw = rng.random((batch, channels, height, width), dtype=np.float32)
    mean = np.asarray(preprocess.mean or (0.5,) * channels, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess.std or (0.5,) * channels, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((raw - mean) / std).astype(np.float32)


def _text_cases(spec: ModelSpec, preprocess: Preprocess, tokenizer: Any, seed: int) -> list[Case]:
    rng = random.Random(seed)
    pool = list(SENTENCES)
    rng.shuffle(pool)
    max_length = preprocess.max_length or 512
    short = [min(pool, key=len)] if seed == 0 else [pool[0]]
    padded = pool[1:4]
    long = [_long_text(pool, tokenizer, max_length), pool[4], pool[5]]
    return [Case(kind, seed, tokenize(spec, tokenizer, texts, max_length), texts)
            for kind, texts in (("short", short), ("padded", padded), ("long", long))]


def _long_text(pool: list[str], tokenizer: Any, max_length: int) -> str:
    """Sentences joined until the tokenizer has to truncate them at max_length."""
    text = ""
    # capped at max_length + 1 so the tokenizer never warns about over-long input
    while len(tokenizer(text, truncation=True, max_length=max_length + 1)["input_ids"]) <= max_length:
        text = (text + " " + " ".join(pool)).strip()
    return text


def tokenize(spec: ModelSpec, tokenizer: Any, texts: list[str], max_length: int,
             pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """The spec's inputs, in its order, as int64 arrays from the model's own tokenizer."""
    encoded = tokenizer(texts, padding="max_length" if pad_to_max else True, truncation=True,
                        max_length=max_length, return_tensors="np")
    ids = encoded["input_ids"]
    out = {}
    for item in spec.inputs:
        value = encoded.get(item.name)
        # a tokenizer without segment ids (RoBERTa style) means "all segment 0"
        out[item.name] = (np.zeros_like(ids) if value is None else value).astype(np.int64)
    return out
