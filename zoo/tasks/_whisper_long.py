"""Whisper on clips longer than its 30 s window: overlapping windows, their transcripts joined where they overlap.

A long clip is cut as transformers' ASR pipeline cuts it with ``chunk_length_s=30`` (``_asr_ctc.chunk_clip``,
the pipeline's ``chunk_iter``): windows of 30 s that overlap by the stride, 5 s on each inner side (a sixth of
the window, the pipeline's default), each one decoded on its own. Neighbouring windows hear the same 10 s, so
their token sequences share a stretch; ``join`` finds it as the pipeline's Whisper decoding does
(``_find_longest_common_sequence``): of every way to lay the next window's tokens over the end of what came
before, the one where the most tokens agree, relative to the overlap's length (ties: the longer overlap; at
least two tokens must agree, else the two are simply put one after the other). The join keeps the earlier
window's tokens up to the middle of that overlap and the later window's from its middle on.
"""

from __future__ import annotations

import numpy as np

WINDOW_SECONDS = 30.0
STRIDE_SHARE = 1 / 6  # the pipeline's default stride_length_s: chunk_length_s / 6, on each side


def join(sequences: list[list[int]]) -> list[int]:
    """One token sequence from the windows' sequences, in order."""
    if not sequences:
        return []
    done: list[int] = []
    left = list(sequences[0])
    for right in sequences[1:]:
        cut_left, cut_right = _overlap(left, right)
        done.extend(left[:cut_left])
        left = list(right[cut_right:])
    return done + left


def _overlap(left: list[int], right: list[int]) -> tuple[int, int]:
    """Where to cut (keep ``left[:a]``, then ``right[b:]``): the middles of the best overlap."""
    a, b = np.asarray(left, np.int64), np.asarray(right, np.int64)
    n, m = len(a), len(b)
    best, where = 0.0, (n, n, 0, 0)  # no overlap found: all of left, then all of right
    for shift in range(1, n + m):  # ``shift`` tokens of overlap when both are long enough
        left_span = (max(0, n - shift), min(n, n + m - shift))
        right_span = (max(0, shift - n), min(m, shift))
        agree = int(np.count_nonzero(a[left_span[0]:left_span[1]] == b[right_span[0]:right_span[1]]))
        score = agree / shift + shift / 10000.0  # the small term prefers a longer overlap among equal ratios
        if agree > 1 and score > best:
            best, where = score, (*left_span, *right_span)
    return (where[0] + where[1]) // 2, (where[2] + where[3]) // 2
