"""The gate a weight-quantised text-generation graph must pass before it may become an artifact.

    zoo optimize artifacts/smollm2 --level int4 --max-ppl-increase 10

Judged against the parent graph, both run by the torch-free runtime's own code paths:

- perplexity on held-out text (the fine-tune run's validation split, ``--eval-data``, else
  ``HELD_OUT``, a built-in varied text) may rise by at most ``--max-ppl-increase`` percent
  (default 2% for int8-weights, 10% for int4). The text is cut into windows of at most
  ``WINDOW`` tokens, each one prefill from an empty cache; the graph's logits at every
  position score the next token. A drop in perplexity passes: it is not damage.
- greedy continuations of ``PROMPTS`` (the runtime's ``Generator``, the prompts in one
  left-padded batch) must equal the parent's for their first ``AGREE_TOKENS`` tokens on at
  least ``MIN_AGREEMENT`` of the prompts. Where a continuation ends (EOS) sooner, both
  must end at the same token.
- speed: decode steps of both graphs, one thread, taking turns step by step on the same
  prompt; the quantised graph must be ``gates.MIN_SPEEDUP`` times as fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters import gates
from zoo.checks import Check
from zoo.errors import DataError
from zoo.manifest import Manifest
from zoo.tasks import get_task

DEFAULT_MAX_PPL_INCREASE = {"int8-weights": 2.0, "int4": 10.0}  # percent
AGREE_TOKENS = 16
MIN_AGREEMENT = 0.9
WINDOW = 256  # tokens per perplexity window: one prefill each, within any context length zoo exports
MIN_SCORED_TOKENS = 128  # fewer next-token scores than this and the perplexity figure is noise
DECODE_STEPS = 24  # per repeat of the speed measurement
DECODE_REPEATS = 3

# varied on purpose: facts, code, lists, dialogue, numbers, other languages; each a few words, as users prompt
PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "To make a cup of tea, first",
    "The best way to learn a new language is",
    "import numpy as np\n\n# compute the mean of a list\n",
    "Dear Sir or Madam,\n\nI am writing to",
    "Q: What is 12 times 7?\nA:",
    "The theory of relativity was developed by",
    "In 1969, the first humans",
    "La ville de Paris est",
    "Here is a list of fruits:\n1. Apple\n2.",
    "The main causes of the First World War were",
    "My favourite thing about autumn is",
)

HELD_OUT = """The lighthouse stood at the end of a narrow spit of rock, and for most of the year the keeper saw no one but \
the man who brought supplies on the first Monday of each month. He kept a log of the weather, the ships that passed \
and the birds that rested on the gallery rail, and in the evenings he read the same six books in turn.

"Are you ever lonely out here?" the supply man asked him once.
"Only when the fog comes in," he said. "Then the world is the size of this room, and the horn is the only voice."

To bake a simple loaf of bread, mix 500 grams of flour, 10 grams of salt, 7 grams of dried yeast and 350 millilitres \
of warm water. Knead the dough for ten minutes, until it is smooth and springs back when pressed. Leave it to rise \
for an hour, shape it, let it rise again, and bake it at 220 degrees Celsius for about thirty minutes.

def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)

The Amazon river carries more water than any other river on Earth, about one fifth of all the fresh water that \
flows into the oceans. Its basin covers roughly seven million square kilometres across nine countries, and the \
forest that grows there produces a large share of the planet's oxygen and holds billions of tonnes of carbon.

Meeting notes, 14 March: the budget for the new library was approved with two changes. The opening is moved from \
September to November, and the children's section will be on the ground floor. Next meeting: 28 March at 10:00.

Le soleil se levait sur la ville, et les premiers cafés ouvraient leurs portes. Dans la rue, un homme promenait \
son chien en lisant le journal, sans voir les pigeons qui s'envolaient devant lui.

In mathematics, a prime number is a whole number greater than one whose only divisors are one and itself. The \
first primes are 2, 3, 5, 7, 11 and 13. Euclid proved more than two thousand years ago that there are infinitely \
many of them: given any finite list of primes, multiply them together and add one, and the result has a prime \
factor that is not on the list."""


@dataclass
class GenerativeData:
    """The gate's held-out token windows and prompts."""

    windows: list[np.ndarray]  # token ids, one window per prefill
    prompts: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def scored_tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


@dataclass
class Reference:
    """The parent's figures on the gate's data, measured once for every level tried."""

    nll: float  # mean negative log-likelihood per scored token
    continuations: list[list[int]]
    logits: list[np.ndarray]  # per window, for the measured difference that widens the golden tolerance


def gate_data(folder: Path, manifest: Manifest, eval_data: str | None) -> GenerativeData:
    """Held-out text (the run's validation split, ``--eval-data``, else ``HELD_OUT``) as token windows."""
    from exporters.evaldata import held_out_texts

    task = get_task(manifest.task)
    texts, what = held_out_texts(manifest, task, eval_data)
    if not texts:
        texts, what = [HELD_OUT], "zoo's built-in held-out text (prose, dialogue, a recipe, code, French)"
    encode = task.runtime_preprocessor(folder, manifest).tokenizer
    ids = [i for text in texts for i in encode.encode(text, add_special_tokens=False).ids]
    context = int(manifest.preprocess.get("generation", {}).get("context_length") or WINDOW)
    width = min(WINDOW, context)
    windows = [np.asarray(ids[i:i + width], np.int64) for i in range(0, len(ids), width)]
    data = GenerativeData([w for w in windows if len(w) > 1], list(PROMPTS), what)
    if data.scored_tokens < MIN_SCORED_TOKENS:
        raise DataError(f"the generative gate would score only {data.scored_tokens} tokens of {what}; it needs at "
                        f"least {MIN_SCORED_TOKENS} for a perplexity that means something: give --eval-data with "
                        "more text (a .txt file, or a data file with a text column)")
    return data


# ---------------------------------------------------------------- accuracy


def reference(parent: Path, folder: Path, manifest: Manifest, data: GenerativeData) -> Reference:
    session = gates.session(parent)
    nll, logits = perplexity(session, data.windows)
    return Reference(nll, continuations(session, folder, manifest, data.prompts), logits)


def perplexity(session: Any, windows: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """(mean next-token negative log-likelihood, each window's logits): one prefill per window."""
    total, count, every = 0.0, 0, []
    for ids in windows:
        logits = prefill_logits(session, ids)
        every.append(logits)
        scores = logits[:-1].astype(np.float64)
        top = scores.max(-1, keepdims=True)
        log_z = np.log(np.exp(scores - top).sum(-1)) + top[:, 0]
        total += float((log_z - scores[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return total / count, every


def prefill_logits(session: Any, ids: np.ndarray) -> np.ndarray:
    """The logits of every position of ``ids`` (one row, an empty cache) [sequence, vocab]."""
    from zoo.tasks._decoding import positions

    mask = np.ones((1, len(ids)), np.int64)
    feed: dict[str, np.ndarray] = {"input_ids": ids[None], "attention_mask": mask, "position_ids": positions(mask)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            _, heads, _, dim = spec.shape
            feed[spec.name] = np.zeros((1, heads, 0, dim), np.float32)
    return session.run([session.get_outputs()[0].name], feed)[0][0]


def continuations(session: Any, folder: Path, manifest: Manifest, prompts: list[str]) -> list[list[int]]:
    """Greedy token ids (EOS kept, so an early end counts) of every prompt, ``AGREE_TOKENS`` at most."""
    rows = []
    for rows in _generator(session, folder, manifest).steps(prompts, max_new_tokens=AGREE_TOKENS, temperature=0,
                                                            repetition_penalty=1.0):
        pass
    return [r.new + ([-1] if r.finish == "stop" else []) for r in rows]  # -1: ended here (EOS)


def _generator(session: Any, folder: Path, manifest: Manifest) -> Any:
    from zoo.runtime.generate import Generator

    return Generator(session, manifest, get_task(manifest.task).runtime_preprocessor(folder, manifest))


@dataclass
class Judgement:
    checks: list[Check]
    figures: dict[str, Any]
    max_abs: float  # largest logit difference to the parent on the held-out windows


def judge(candidate: Path, folder: Path, manifest: Manifest, data: GenerativeData, ref: Reference,
          max_ppl_increase: float) -> Judgement:
    """The perplexity and agreement checks of ``candidate`` against the parent's ``ref``."""
    session = gates.session(candidate)
    nll, logits = perplexity(session, data.windows)
    got = continuations(session, folder, manifest, data.prompts)
    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(ref.logits, logits))
    return Judgement(*_checks(ref.nll, nll, ref.continuations, got, data, max_ppl_increase), max_abs)


def _checks(parent_nll: float, nll: float, parent: list[list[int]], got: list[list[int]], data: GenerativeData,
            max_increase: float) -> tuple[list[Check], dict[str, Any]]:
    before, after = float(np.exp(parent_nll)), float(np.exp(nll))
    increase = 100.0 * (after / before - 1.0)
    agree = [_agreed(p, g) for p, g in zip(parent, got)]
    share = sum(a >= min(AGREE_TOKENS, len(p)) for a, p in zip(agree, parent)) / len(parent)
    parted = [f"{i}@{a}" for i, (a, p) in enumerate(zip(agree, parent)) if a < min(AGREE_TOKENS, len(p))]
    checks = [
        Check("perplexity increase", bool(increase <= max_increase), f"{increase:+.2f}%", f"<= {max_increase:g}%",
              f"{before:.3f} -> {after:.3f} on {data.scored_tokens} tokens of {data.source}"),
        Check(f"greedy agreement ({AGREE_TOKENS} tokens)", bool(share >= MIN_AGREEMENT), f"{100 * share:.1f}%",
              f">= {100 * MIN_AGREEMENT:g}% of prompts",
              f"{len(parent) - len(parted)} of {len(parent)} prompts agree" + (
                  f"; parted (prompt@token): {', '.join(parted)}" if parted else "")),
    ]
    figures = {"perplexity_parent": round(before, 4), "perplexity": round(after, 4),
               "perplexity_increase_percent": round(increase, 3), "max_ppl_increase_percent": max_increase,
               "scored_tokens": data.scored_tokens, "data": data.source, "prompts": len(parent),
               "agreement": round(share, 4), "agreed_tokens": agree, "agree_tokens": AGREE_TOKENS,
               "min_agreement": MIN_AGREEMENT}
    return checks, figures


def _agreed(parent: list[int], got: list[int]) -> int:
    """How many leading tokens two continuations share."""
    for index, (a, b) in enumerate(zip(parent, got)):
        if a != b:
            return index
    return min(len(parent), len(got))


# ---------------------------------------------------------------- speed


def measure_decode(parent: Path, candidate: Path, folder: Path, manifest: Manifest,
                   prompt: str = PROMPTS[1]) -> list[gates.SpeedFigure]:
    """Median time of one decode step (batch 1, one thread), both graphs taking turns step by step."""
    loops = [_generator(gates.session(path, threads=gates.SPEED_THREADS), folder, manifest) for path in
             (parent, candidate)]
    times: list[list[float]] = [[], []]
    for _ in range(DECODE_REPEATS):
        steps = [loop.steps([prompt], max_new_tokens=DECODE_STEPS, temperature=0) for loop in loops]
        for step in range(DECODE_STEPS):
            for index, walk in enumerate(steps):
                start = time.perf_counter()
                if next(walk, None) is None:
                    continue  # ended at EOS: fewer samples, never a wrong one
                if step:  # the first step is the prompt's prefill
                    times[index].append(time.perf_counter() - start)
    parent_ms, candidate_ms = (1e3 * float(np.median(t)) if t else float("inf") for t in times)
    return [gates.SpeedFigure("decode, batch 1", parent_ms, candidate_ms)]
