"""Whisper on a clip longer than 30 s: windows cut and transcripts joined as transformers' ASR pipeline does.

    .venv/bin/pytest tests/test_whisper_long.py

A tiny random Whisper (no timestamp tokens: its tokens are words only, so the pipeline's Whisper decoding joins
windows by their overlap alone) is exported once; a 65 s synthetic clip is transcribed by ``zoo.load(...).predict``
and by ``pipeline("automatic-speech-recognition", chunk_length_s=30)`` on the torch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.tasks._audio import synthetic_clip

RATE = 16_000
TOKENS = 40

pytestmark = pytest.mark.xdist_group("asr")  # the tiny Whisper export is test_asr.py's, made once per worker


def speech_like() -> np.ndarray:
    """65 s of voiced stretches and pauses: three 30 s windows (0-30, 20-50, 40-65 s)."""
    rng = np.random.default_rng(7)
    parts = [np.concatenate([synthetic_clip(rng.uniform(0.5, 2.0), RATE, rng),
                             np.zeros(int(rng.uniform(0.1, 0.6) * RATE), np.float32)]) for _ in range(60)]
    return np.concatenate(parts)[:65 * RATE]


@pytest.fixture(scope="module")
def long_clip() -> np.ndarray:
    return speech_like()


@pytest.fixture(scope="module")
def expected(whisper: tuple[Path, Any], long_clip: np.ndarray) -> str:
    import transformers

    pipe = transformers.pipeline("automatic-speech-recognition", model=str(whisper[0]), device="cpu")
    # greedy, as zoo decodes (the pipeline's own default is 5 beams)
    return pipe(long_clip.copy(), chunk_length_s=30, generate_kwargs={"max_new_tokens": TOKENS, "num_beams": 1})["text"]


def test_a_65_s_clip_equals_the_pipeline_with_chunk_length_30(whisper: tuple[Path, Any], long_clip: np.ndarray,
                                                              expected: str) -> None:
    import tokenizers

    import zoo
    from zoo.tasks import _whisper_long as long

    _, result = whisper
    model = zoo.load(result.path)
    got = model.predict(long_clip, max_new_tokens=TOKENS)
    assert got.chunks == 3 and got.note is None and got.seconds == pytest.approx(65.0)
    assert got.text == expected and expected
    # the windows overlap in what they say: the join drops a shared stretch, so plain concatenation differs
    windows = model.predict([long_clip[:30 * RATE], long_clip[20 * RATE:50 * RATE], long_clip[40 * RATE:]],
                            max_new_tokens=TOKENS)
    tokenizer = tokenizers.Tokenizer.from_file(str(result.path / "tokenizer.json"))
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    words = [[t for t in w.token_ids if t not in special] for w in windows]
    assert long.join(words) == list(got.token_ids) and sum(map(len, words)) > len(got.token_ids)


def test_windows_run_a_few_at_a_time_give_the_same_text(whisper: tuple[Path, Any], long_clip: np.ndarray,
                                                       expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo
    from zoo.tasks import _asr_whisper

    monkeypatch.setattr(_asr_whisper, "WINDOWS_PER_RUN", 2)  # the 3 windows in two runs: 2, then 1
    assert zoo.load(whisper[1].path).predict(long_clip, max_new_tokens=TOKENS).text == expected


def test_a_join_that_keeps_the_overlap_twice_is_caught(whisper: tuple[Path, Any], long_clip: np.ndarray,
                                                      expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted fault: windows put one after the other, their shared stretch kept twice."""
    import zoo
    from zoo.tasks import _whisper_long as long

    monkeypatch.setattr(long, "join", lambda sequences: [t for s in sequences for t in s])
    got = zoo.load(whisper[1].path).predict(long_clip, max_new_tokens=TOKENS)
    assert got.text != expected and len(got.text) > len(expected)


def test_join_follows_the_pipelines_longest_common_sequence() -> None:
    from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence

    from zoo.tasks._whisper_long import join

    rng = np.random.default_rng(0)
    cases = [[[1, 2, 3, 4, 5], [4, 5, 6, 7]], [[1, 2, 3], [7, 8, 9]], [[5, 5, 5, 6], [5, 6, 6, 7], [6, 7, 8]]]
    for _ in range(40):  # overlapping slices of one random text, with a few tokens changed
        text = rng.integers(0, 6, 40).tolist()
        starts = sorted(rng.integers(0, 25, 3).tolist())
        pieces = [text[s:s + 15] for s in starts]
        for piece in pieces:
            piece[rng.integers(0, len(piece))] = int(rng.integers(0, 6))
        cases.append(pieces)
    for sequences in cases:
        assert join(sequences) == _find_longest_common_sequence(sequences), sequences
