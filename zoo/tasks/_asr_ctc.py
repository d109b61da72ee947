"""CTC transcripts in numpy: greedy decoding from the tokenizer's vocabulary, long clips in overlapping chunks.

Decoding is ``Wav2Vec2CTCTokenizer.decode`` with its defaults, which is what
transformers' ASR pipeline prints: the best class per frame, runs of one token
collapsed to one, the CTC blank (the tokenizer's pad token) dropped, the word
delimiter turned into a space, the text stripped (and lower-cased, cleaned up as
the tokenizer says). Special tokens other than the blank stay, as there.

Chunking is the pipeline's (``chunk_length_s``, ``stride_length_s``): windows of
``chunk`` samples every ``chunk - left - right`` samples, each seeing ``left`` and
``right`` samples of context that its logits then drop, lengths rounded to whole
logit frames. A clip no longer than one window is one chunk with no stride, so
the transcript of a short clip is the unchunked one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.tasks._memory import conv_lengths

# clean_up_tokenization's replacements (transformers' PreTrainedTokenizerBase), applied when the tokenizer asks
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class CtcVocab:
    """What decoding needs from a CTC tokenizer: its tokens by id, the blank, the word delimiter."""

    tokens: tuple[str, ...]
    blank: int
    delimiter: int | None
    unknown: str = "<unk>"
    lower: bool = False
    clean_up: bool = False

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> CtcVocab:
        tokens = tuple(str(tokenizer.convert_ids_to_tokens(i)) for i in range(len(tokenizer)))
        delimiter = getattr(tokenizer, "word_delimiter_token_id", None)
        return cls(tokens=tokens, blank=int(tokenizer.pad_token_id), delimiter=delimiter,
                   unknown=str(tokenizer.unk_token), lower=bool(getattr(tokenizer, "do_lower_case", False)),
                   clean_up=bool(tokenizer.clean_up_tokenization_spaces))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CtcVocab:
        return cls(tokens=tuple(record["tokens"]), blank=int(record["blank"]), delimiter=record.get("delimiter"),
                   unknown=str(record.get("unknown", "<unk>")), lower=bool(record.get("lower")),
                   clean_up=bool(record.get("clean_up")))

    def record(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "blank": self.blank, "delimiter": self.delimiter,
                "unknown": self.unknown, "lower": self.lower, "clean_up": self.clean_up}

    def collapse(self, ids: np.ndarray) -> np.ndarray:
        """Frame ids -> emitted ids: each run of one id kept once, then the blanks dropped (in that order:
        a blank between two equal ids is what lets a letter repeat)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0:
            return ids
        runs = ids[np.concatenate([[True], ids[1:] != ids[:-1]])]
        return runs[runs != self.blank]

    def decode(self, ids: np.ndarray) -> str:
        """The transcript of one row of frame ids (argmax of the logits)."""
        pieces = [" " if i == self.delimiter else self.token(int(i)) for i in self.collapse(ids)]
        text = "".join(pieces).strip()
        if self.lower:
            text = text.lower()
        if self.clean_up:
            for before, after in CLEAN_UP:
                text = text.replace(before, after)
        return text

    def token(self, index: int) -> str:
        # a head wider than the tokenizer (vocab_size padded up) has classes with no token: transformers says <unk>
        return self.tokens[index] if 0 <= index < len(self.tokens) else self.unknown


def vocab_problems(record: Any) -> list[str]:
    """What is wrong with a manifest's ``ctc`` record (untrusted input)."""
    if not isinstance(record, dict):
        return ["ctc vocabulary missing (preprocess.ctc)"]
    tokens = record.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        return ["ctc.tokens must be a non-empty list of strings"]
    problems = []
    for key in ("blank", "delimiter"):
        value = record.get(key)
        if key == "delimiter" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(tokens):
            problems.append(f"ctc.{key} is {value!r}, give a token id below {len(tokens)}")
    return problems


# ---------------------------------------------------------------- chunks


@dataclass(frozen=True)
class Chunk:
    """One window of a clip: its samples [start, start + length), and the context on each side its logits drop."""

    clip: int
    start: int
    length: int
    left: int
    right: int


def aligned(seconds: float, rate: int, frame: int) -> int:
    """Seconds to samples, rounded to whole logit frames as the pipeline rounds them."""
    return int(round(seconds * rate / frame) * frame)


def chunk_clip(clip: int, samples: int, chunk: int, left: int, right: int) -> list[Chunk]:
    """The pipeline's ``chunk_iter`` windows over a clip of ``samples`` samples."""
    step = chunk - left - right
    out = []
    for start in range(0, samples, step):
        end = start + chunk
        last = end >= samples
        length = min(end, samples) - start
        stride_left = 0 if start == 0 else left
        if length > stride_left:
            out.append(Chunk(clip, start, length, stride_left, 0 if last else right))
        if last:
            break
    return out


def kept_frames(chunk: Chunk, frame: int) -> slice:
    """The logit frames of ``chunk`` that count (the pipeline's ``rescale_stride``, then its slice)."""
    frames = int(round(chunk.length / frame))
    left = int(round(chunk.left / chunk.length * frames))
    right = int(round(chunk.right / chunk.length * frames))
    return slice(left, frames - right)


def stitch(ids: np.ndarray, chunks: list[Chunk], clips: int, kernels: Sequence[int],
           strides: Sequence[int]) -> list[np.ndarray]:
    """Per clip, its chunks' counted frame ids joined in order (``ids``: [rows, frames], one row per chunk).

    A chunk's row ends at the frames its own samples make: a row padded to a longer neighbour has more,
    which the pipeline, running each chunk alone, never sees.
    """
    frame = int(math.prod(strides))
    parts: list[list[np.ndarray]] = [[] for _ in range(clips)]
    for row, chunk in zip(ids, chunks):
        kept = kept_frames(chunk, frame)
        real = conv_lengths(chunk.length, kernels, strides)[-1]
        parts[chunk.clip].append(row[kept.start:min(kept.stop, real)])
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]
