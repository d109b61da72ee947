"""fill-mask: the likeliest tokens for each mask token in a text (transformers ``*ForMaskedLM``).

    zoo export ./bert-base-uncased --onnx
    zoo predict artifacts/bert-base-uncased "Paris is the [MASK] of France." --top-k 3

The graph is the masked-LM's ``logits`` [batch, sequence, vocabulary]. At run time, for
every mask token in a text, the softmax over the vocabulary gives the top-k tokens, each
with its id, its text and the whole text with that token in the mask's place, as
transformers' ``fill-mask`` pipeline gives them. A text may hold several masks (each is
filled on its own); a text without one is refused, naming the model's mask token.
Verification compares torch's and onnxruntime's top-5 tokens at every real token of
texts with words masked out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError, InputError
from zoo.spec import ModelSpec, Tolerances
from zoo.tasks._classify import CountedAgreement, TopOneGate, softmax
from zoo.tasks._text import EXPORT_BATCH, EXPORT_SEQUENCE, SENTENCES, TextTask, tokenize
from zoo.tasks.base import Case

DEFAULT_TOP_K = 5  # the fill-mask pipeline's default
AGREEMENT_K = 5  # verification: the top-5 tokens of every real token must agree
# transformers' clean_up_tokenization: the spaces a WordPiece decode leaves before punctuation and contractions.
# Whether a tokenizer applies it is measured at export (``_cleans_up``) and recorded in the manifest.
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
_PROBE = "It's a test , isn't it ? Yes ."  # a text whose raw decode shows the clean-up, if the tokenizer does it


@dataclass(frozen=True)
class Fill:
    """One candidate for one mask: the token, its text, the input with it in the mask's place, its probability."""

    token: int
    token_str: str
    sequence: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "token": self.token, "token_str": self.token_str, "sequence": self.sequence}


@dataclass(frozen=True)
class FillMaskResult:
    """The top-k fills of each mask of one text, masks in text order, best fill first."""

    text: str
    masks: tuple[tuple[Fill, ...], ...]

    @property
    def best(self) -> tuple[Fill, ...]:
        """The likeliest fill of each mask."""
        return tuple(fills[0] for fills in self.masks)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "masks": [[f.to_dict() for f in fills] for fills in self.masks]}


@dataclass(frozen=True)
class MaskedBatch:
    """A tokenised batch, where its masks are, and the artifact's decoder for the filled sequences."""

    arrays: dict[str, np.ndarray]
    texts: list[str]
    positions: list[np.ndarray]  # per text, the positions of its real tokens (padding left out)
    masks: list[list[int]]  # per text, which of its real tokens are masks
    mask_token: str
    decode: Callable[[list[int], bool], str]


class MaskedTextPreprocessor:
    """The text preprocessor, plus the check that every text holds the model's mask token."""

    def __init__(self, folder: Path, manifest: Any):
        from zoo.tasks.preprocess import TextPreprocessor

        pp = manifest.preprocess
        if not isinstance(pp.get("mask_token"), str) or not isinstance(pp.get("mask_token_id"), int):
            raise ArtifactError(f"{folder}/manifest.json records no preprocess.mask_token for a fill-mask model; "
                                "re-export the artifact")
        self.text = TextPreprocessor(folder, manifest)
        self.mask_token, self.mask_id = pp["mask_token"], pp["mask_token_id"]
        self.clean_up = bool(pp.get("clean_up_tokenization_spaces"))

    def __call__(self, texts: list[str]) -> MaskedBatch:
        batch = self.text(texts)
        ids = batch.arrays["input_ids"]
        real = batch.arrays.get("attention_mask", np.ones_like(ids)).astype(bool)
        positions = [np.flatnonzero(keep) for keep in real]
        masks = [np.flatnonzero(row[kept] == self.mask_id).tolist() for row, kept in zip(ids, positions)]
        return MaskedBatch(batch.arrays, list(texts), positions, masks, self.mask_token, self.decode)

    def decode(self, ids: list[int], skip_special: bool) -> str:
        """Token ids to text as the model's transformers tokenizer decodes them."""
        return decode(self.text.tokenizer, ids, skip_special, self.clean_up)


def decode(tokenizer: Any, ids: list[int], skip_special: bool, clean_up: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=skip_special)
    if clean_up:
        for before, after in CLEAN_UP:
            text = text.replace(before, after)
    return text


class TopKAgreement(CountedAgreement):
    """The top-k tokens of torch and onnxruntime, in order, at every real token of the grid.

    A position where they differ is a tie, not a failure, when torch's own logits of the
    two tokens swapped at each differing rank are within tolerance of each other.
    """

    def __init__(self, output: str, tol: Tolerances, k: int = AGREEMENT_K):
        super().__init__(output, tol)
        self.k = k

    def compare(self, reference: np.ndarray, got: np.ndarray, case: Case) -> tuple[int, int, int]:
        mask = case.inputs.get("attention_mask")
        keep = np.ones(reference.shape[:-1], dtype=bool) if mask is None else mask.astype(bool)
        return topk_agreement(reference[keep], got[keep], self.k, self.tol)

    def check(self) -> Check:
        return self.counted(f"top-{self.k} token agreement", "tokens")


def topk_agreement(reference: np.ndarray, got: np.ndarray, k: int, tol: Tolerances) -> tuple[int, int, int]:
    """(positions compared, disagreements, ties excused) of the ordered top-k of [positions, vocabulary] rows."""
    k = min(k, reference.shape[-1])
    ref_top, got_top = top_indices(reference, k), top_indices(got, k)
    differ = ref_top != got_top
    ref_at_ref = np.take_along_axis(reference, ref_top, -1).astype(np.float64)
    ref_at_got = np.take_along_axis(reference, got_top, -1).astype(np.float64)
    close = np.abs(ref_at_ref - ref_at_got) <= tol.atol + tol.rtol * np.abs(ref_at_ref)
    rows_differ = differ.any(-1)
    rows_tied = rows_differ & (close | ~differ).all(-1)
    return int(reference.shape[0]), int((rows_differ & ~rows_tied).sum()), int(rows_tied.sum())


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values along the last axis, largest first (equal values: lower index first).

    A partition, then a sort of k values per row: a full sort of a vocabulary at every position
    of the grid costs seconds a case.
    """
    part = np.argpartition(-values, k - 1, axis=-1)[..., :k]
    order = np.lexsort((part, -np.take_along_axis(values, part, -1)), axis=-1)
    return np.take_along_axis(part, order, -1)


class FillMask(TextTask):
    name: ClassVar[str] = "fill-mask"
    summary: ClassVar[str] = "the likeliest tokens for each mask token in a text"
    hf_heads: ClassVar[tuple[str, ...]] = ("ForMaskedLM",)
    hf_auto_class: ClassVar[str | None] = "AutoModelForMaskedLM"
    predict_options: ClassVar[dict[str, type]] = {"top_k": int}
    expects: ClassVar[str] = "strings holding the model's mask token"

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("logits",)

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"logits": ["batch", "sequence", None]}

    # ------------------------------------------------------------ export

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        length = min(EXPORT_SEQUENCE, spec.preprocess.max_length or EXPORT_SEQUENCE)
        texts = [mask_words(t, mask_token(processor), 1, random.Random(i)) for i, t in
                 enumerate(SENTENCES[:EXPORT_BATCH])]
        return tokenize(spec, processor, texts, length, pad_to_max=True)

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        """The text grid with words masked out: one mask per text, two in every other text.

        The long case keeps only its text of max_length tokens: logits over the vocabulary at
        every position make each row of it tens of megabytes to compare.
        """
        mask, cases = mask_token(processor), []
        for case in super().grid(spec, processor, seeds):
            rng = random.Random(case.seed)
            kept = case.texts[:1] if case.kind == "long" else case.texts
            texts = [mask_words(t, mask, 1 + i % 2, rng) for i, t in enumerate(kept)]
            cases.append(Case(case.kind, case.seed, tokenize(spec, processor, texts, spec.preprocess.max_length or 512),
                              texts=texts))
        return cases

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        record = super().write_preprocessor(spec, processor, stage, folder)
        record.update(mask_token=mask_token(processor), mask_token_id=int(processor.mask_token_id),
                      clean_up_tokenization_spaces=_cleans_up(processor))
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        return [*super().export_checks(stage, record, cases, references), _decode_check(stage, record, cases)]

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> TopKAgreement:
        return TopKAgreement("logits", tol)

    def optimization_gate(self, tol: Tolerances) -> TopOneGate:
        return TopOneGate(tol, per_token=True)

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> MaskedTextPreprocessor:
        return MaskedTextPreprocessor(folder, manifest)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        top_k = options.get("top_k", DEFAULT_TOP_K)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k={top_k!r}; give a positive number of tokens to return for each mask")
        return {"top_k": top_k}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[FillMaskResult]:
        logits = outputs["logits"]
        k = min(options.get("top_k", DEFAULT_TOP_K), logits.shape[-1])
        _check_masks(batch)
        results = []
        for row, text in enumerate(batch.texts):
            kept = batch.positions[row]
            ids = batch.arrays["input_ids"][row, kept].tolist()
            single = len(batch.masks[row]) == 1
            masks = tuple(_fills(softmax(logits[row, kept[m]].astype(np.float32)), ids, m, k, single, batch.decode)
                          for m in batch.masks[row])
            results.append(FillMaskResult(text=text, masks=masks))
        return results

    def render(self, title: str, inputs: list[str], results: list[Any]) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for column in ("input", "mask", "token", "score", "sequence"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for text, result in zip(inputs, results):
            first = True
            for m, fills in enumerate(result.masks):
                for rank, fill in enumerate(fills):
                    table.add_row(escape(text) if first else "", str(m + 1) if rank == 0 else "",
                                  escape(fill.token_str), f"{fill.score:.4f}", escape(fill.sequence))
                    first = False
        return table

    # ------------------------------------------------------------ training

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """A masked LM fine-tunes as a text classifier: a new classification head on its encoder."""
        import dataclasses

        return dataclasses.replace(spec, task="text-classification")


def _check_masks(batch: MaskedBatch) -> None:
    """Every text must hold a mask token (checked after the graph ran, so zoo bench times plain sentences)."""
    for i, found in enumerate(batch.masks):
        if not found:
            mask = batch.mask_token
            where = " within its first max_length tokens" if mask in batch.texts[i] else ""
            raise InputError(f"input {i} holds no mask token{where}; write {mask} where the word to fill goes, "
                             f"e.g. 'Paris is the {mask} of France.'")


def _fills(probs: np.ndarray, ids: list[int], position: int, k: int, single: bool,
           decode: Callable[[list[int], bool], str]) -> tuple[Fill, ...]:
    """The top-k fills of the mask at ``position``; the pipeline keeps a text's other masks in its sequences."""
    fills = []
    for token in top_indices(probs, k).tolist():
        filled = list(ids)
        filled[position] = token
        fills.append(Fill(token=token, token_str=decode([token], False), sequence=decode(filled, single),
                          score=float(probs[token])))
    return tuple(fills)


def mask_token(processor: Any) -> str:
    token = getattr(processor, "mask_token", None)
    if not isinstance(token, str) or getattr(processor, "mask_token_id", None) is None:
        raise ArtifactError("the model's tokenizer has no mask token; a fill-mask model needs one "
                            "(tokenizer_config.json mask_token)")
    return token


def mask_words(text: str, mask: str, count: int, rng: random.Random) -> str:
    """``text`` with ``count`` of its first twenty words replaced by ``mask`` (their punctuation kept)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words[:20]) if w.strip(".,;:?!'\"").isalpha()]
    for i in sorted(rng.sample(candidates, min(count, len(candidates)))):
        word = words[i]
        core = word.strip(".,;:?!'\"")
        words[i] = word.replace(core, mask, 1)
    return " ".join(words)


def _cleans_up(processor: Any) -> bool:
    """Whether the tokenizer's decode cleans up spaces after the Rust decoder (measured, not read from settings)."""
    ids = processor(_PROBE, add_special_tokens=False)["input_ids"]
    return processor.decode(ids) != processor.backend_tokenizer.decode(ids, skip_special_tokens=False)


def _decode_check(stage: Path, record: dict[str, Any], cases: list[Case]) -> Check:
    """The runtime's decode of the grid's ids (filled sequences, with and without special tokens) must give
    the model tokenizer's text."""
    import transformers
    from tokenizers import Tokenizer

    runtime = Tokenizer.from_file(str(stage / "tokenizer.json"))
    reference = transformers.AutoTokenizer.from_pretrained(str(stage))
    clean_up = bool(record.get("clean_up_tokenization_spaces"))
    differ, compared = [], 0
    for case in cases:
        for row, mask in zip(case.inputs["input_ids"], case.inputs.get("attention_mask", case.inputs["input_ids"])):
            ids = row[mask.astype(bool)].tolist() if "attention_mask" in case.inputs else row.tolist()
            for skip in (True, False):
                compared += 1
                got, want = decode(runtime, ids, skip, clean_up), reference.decode(ids, skip_special_tokens=skip)
                if got != want:
                    differ.append(f"{case.label}: {got[:40]!r} vs {want[:40]!r}")
    return Check("decoded text matches the tokenizer", not differ, f"{compared - len(differ)}/{compared}",
                 "all sequences", "; ".join(differ[:2]))


TASK = FillMask()
