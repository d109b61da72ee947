"""What every text task shares: token inputs, the tokenizer, real sentences for the grid.

Export traces batch 2 x 16 padded tokens; the grid checks, per seed, a short
sentence (batch 1), a padded batch of real sentences and a batch whose longest
row reaches the model's max length, all made by the model's own tokenizer.
The artifact carries ``tokenizer.json`` plus the padding/truncation settings
that let ``tokenizers`` alone reproduce those ids, and export checks that it does.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ConfigError, ModelUnavailableError, first_line
from zoo.folders import download_command, read_json
from zoo.spec import InputSpec, ModelSpec, Preprocess
from zoo.tasks._memory import ModelDims, input_terms, transformer_terms
from zoo.tasks.base import Case, Task

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
EXPORT_BATCH = 2
EXPORT_SEQUENCE = 16
# Architectures whose position ids start after the padding index, so two
# positions of max_position_embeddings are never usable by tokens.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}

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
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")

# Real sentences of mixed length, so padded batches look like production traffic.
BENCH_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film, the acting was superb and the music stayed with me for days.",
    "Paris is the capital of France.",
    "The committee will publish its final report on climate adaptation next spring.",
    "What time does the train to Edinburgh leave tomorrow morning?",
    "She read the letter twice before folding it carefully into her pocket.",
    "Rain is expected in the north-west by Thursday evening.",
    "Apple released a new laptop with a faster chip and a brighter screen.",
)


def text_inputs(names: tuple[str, ...] = ("input_ids", "attention_mask")) -> tuple[InputSpec, ...]:
    return tuple(InputSpec(n, "int64", ("batch", "sequence")) for n in names)


class TextTask(Task):
    modality: ClassVar[str] = "text"
    expects: ClassVar[str] = "strings"

    # ------------------------------------------------------------ sources

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        names = ["input_ids", "attention_mask"]
        if int(config.get("type_vocab_size", 0) or 0) >= 2:
            names.append("token_type_ids")
        pooling = (st or {}).get("pooling_args", {})
        preprocess = Preprocess(max_length=_max_length(folder, config, st), **pooling)
        return text_inputs(tuple(names)), preprocess, self.labels_from_config(config)

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        return load_tokenizer(spec, folder)

    # ------------------------------------------------------------ export

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        return {"sequence": spec.preprocess.max_length or 512}

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        length = min(EXPORT_SEQUENCE, spec.preprocess.max_length or EXPORT_SEQUENCE)
        return tokenize(spec, processor, list(SENTENCES[:EXPORT_BATCH]), length, pad_to_max=True)

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        return [case for seed in seeds for case in _text_cases(spec, processor, seed)]

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        import dataclasses
        import os

        before = set(os.listdir(stage))
        processor.save_pretrained(stage)
        files = sorted(set(os.listdir(stage)) - before | {"tokenizer.json"})
        record: dict[str, Any] = dataclasses.asdict(spec.preprocess)
        record.update(files=files, truncation=True, truncation_side=processor.truncation_side, padding="longest",
                      padding_side=processor.padding_side, pad_token=processor.pad_token,
                      pad_token_id=processor.pad_token_id,
                      pad_type_id=int(getattr(processor, "pad_token_type_id", 0) or 0))
        return record

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        return [tokenizer_file_check(stage, record, cases)]

    # ------------------------------------------------------------ verify

    def memory_terms(self, spec: ModelSpec, dims: ModelDims, case: Case) -> dict[str, int]:
        batch, sequence = case.inputs[spec.inputs[0].name].shape
        return {**input_terms(case.inputs), **transformer_terms(dims, int(batch), int(sequence))}

    def shrink_case(self, spec: ModelSpec, processor: Any, case: Case) -> Case | None:
        """Shorter texts (3/4 of the tokens, down to the export's 16), then half the batch; re-tokenised.

        The texts themselves are cut at a word, so the artifact's tokenizer, which truncates at
        the model's max length, still makes the very ids the case holds.
        """
        batch, sequence = case.inputs[spec.inputs[0].name].shape
        if sequence > EXPORT_SEQUENCE:
            target = max(EXPORT_SEQUENCE, sequence * 3 // 4)
            texts = [_cut_text(processor, text, target) for text in case.texts]
        elif batch > 1:
            texts = case.texts[:(batch + 1) // 2]
        else:
            return None
        return Case(case.kind, case.seed, tokenize(spec, processor, texts, spec.preprocess.max_length or 512),
                    texts=texts)

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        from zoo.tasks.preprocess import TextPreprocessor

        if "tokenizer.json" not in manifest.preprocess.get("files", []):
            return ["tokenizer.json (not listed)"]
        if not (Path(folder) / "tokenizer.json").is_file():
            return []  # reported as missing with the other listed files
        try:
            TextPreprocessor(folder, manifest)(["zoo checks the tokenizer"])
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            return [f"tokenizer.json unreadable: {exc}"]
        return []

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> Any:
        from zoo.tasks.preprocess import TextPreprocessor

        return TextPreprocessor(folder, manifest)

    def is_single(self, item: Any) -> bool:
        return isinstance(item, str)

    def bench_items(self, batch_size: int, rng: np.random.Generator) -> list[Any]:
        return [BENCH_SENTENCES[i % len(BENCH_SENTENCES)] for i in range(batch_size)]

    # ------------------------------------------------------------ training

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch's model inputs; segment ids default to 0 when the tokenizer made none."""
        out = {i.name: batch[i.name] for i in spec.inputs if i.name in batch}
        if "token_type_ids" in [i.name for i in spec.inputs] and "token_type_ids" not in out:
            import torch

            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        return out


def _max_length(folder: Path, config: dict[str, Any], st: dict[str, Any] | None) -> int:
    limit = int(config.get("max_position_embeddings", 512) or 512)
    if config.get("model_type") in _POSITION_OFFSET_TYPES:
        limit -= 2
    tok_max = read_json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    if st and st.get("max_seq_length"):
        limit = min(limit, int(st["max_seq_length"]))
    return limit


def _text_cases(spec: ModelSpec, tokenizer: Any, seed: int) -> list[Case]:
    rng = random.Random(seed)
    pool = list(SENTENCES)
    rng.shuffle(pool)
    max_length = spec.preprocess.max_length or 512
    short = [min(pool, key=len)] if seed == 0 else [pool[0]]
    padded = pool[1:4]
    long = [_long_text(pool, tokenizer, max_length), pool[4], pool[5]]
    return [Case(kind, seed, tokenize(spec, tokenizer, texts, max_length), texts=texts)
            for kind, texts in (("short", short), ("padded", padded), ("long", long))]


def _long_text(pool: list[str], tokenizer: Any, max_length: int) -> str:
    """Sentences joined until the tokenizer has to truncate them at max_length."""
    text = ""
    # capped at max_length + 1 so the tokenizer never warns about over-long input
    while len(tokenizer(text, truncation=True, max_length=max_length + 1)["input_ids"]) <= max_length:
        text = (text + " " + " ".join(pool)).strip()
    return text


def _cut_text(tokenizer: Any, text: str, tokens: int) -> str:
    """The longest run of ``text``'s first words that the tokenizer makes into at most ``tokens`` ids."""
    words = text.split(" ")
    low, high = 0, len(words)  # words[:low] fits; bisect for the most that does
    while low < high:
        middle = (low + high + 1) // 2
        # capped at tokens + 1, as in _long_text: the tokenizer never warns about over-long input
        if len(tokenizer(" ".join(words[:middle]), truncation=True, max_length=tokens + 1)["input_ids"]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


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


def tokenizer_file_check(folder: Path, record: dict[str, Any], cases: list[Case]) -> Check:
    """tokenizer.json read by the runtime's own preprocessor must give the model tokenizer's ids."""
    from zoo.tasks.preprocess import TextPreprocessor

    if not (Path(folder) / "tokenizer.json").is_file():
        return Check("tokenizer.json", False, "missing", "present", "a torch-free runtime cannot tokenise")
    preprocessor = TextPreprocessor.from_record(folder, record, [(n, np.int64) for n in cases[0].inputs])
    mismatched = []
    for case in cases:
        got_arrays = preprocessor(case.texts).arrays
        for name, expected in case.inputs.items():
            got = got_arrays[name]
            if name == "token_type_ids" and not got.any() and not expected.any():
                continue
            if got.shape != expected.shape or not np.array_equal(got, expected):
                mismatched.append(f"{case.label} {name}")
    return Check("tokenizer.json reproduces tokenisation", not mismatched, f"{len(cases)} cases",
                 "identical ids and masks", "; ".join(mismatched[:3]))


def load_tokenizer(spec: ModelSpec, location: Path | None) -> Any:
    """The model's own fast tokenizer (transformers), for export checks and training."""
    import transformers

    if location is None or not any((location / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would silently build an empty 5-token tokenizer here
        fetch = (f" or download them ({download_command(spec.source_id, spec.revision, configs_only=True)})"
                 if not spec.local_path else "")
        raise ModelUnavailableError(
            f"no tokenizer files in {location} (looked for {', '.join(TOKENIZER_FILES)}); export, training and "
            "the torch-free runtime need the model's own tokenizer, with or without --random-init: save it beside "
            f"the model with tokenizer.save_pretrained(folder){fetch}")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(location), use_fast=True,
                                                         trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"no tokenizer for {spec.name} in {location}: {first_line(exc)}; "
                                    "save one beside the model with tokenizer.save_pretrained(folder)") from exc
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{spec.name} has only a slow tokenizer; zoo's runtime needs tokenizer.json "
                          "(a fast tokenizer): convert it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    return tok
