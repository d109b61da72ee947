"""Whisper on clips longer than its 30 s window: overlapping windows, their transcripts joined where they overlap.

A long clip is cut as transformers' ASR pipeline cuts it with ``chunk_length_s=30`` (``_asr_ctc.chunk_clip``,
the pipeline's ``chunk_iter``): windows of 30 s that overlap by the stride, 5 s on each inner side (a sixth of
the window, the pipeline's default), each one decoded on its own. Neighbouring windows hear the same 10 s, so
their token sequences share a stretch; ``join`` finds it as the pipeline's Whisper decoding does
(``_find_longest_common_sequence``): of every way to lay the next window's tokens over the end of what came
before, the one where the most tokens agree, relative to the overlap's length (ties: the longer overlap; at
least two tokens must agree, else the two are simply put one after the other). The join keeps the earlier
window's tokens up to the middle of that overlap and the later window's from its middle on.

With timestamps (``timed_join``), the pipeline's Whisper decoding with ``return_timestamps=True`` is followed
(``_decode_asr``): each window's timestamps are moved by where the window starts in the clip; a timestamp pair
closes a segment, whose text is the join above of the text it gathered in each window it spans. Timestamps
the next window hears too are not trusted to close a segment: those in a window's right stride (from its last
timestamp back to the first before the stride) are passed over with the one that follows them, and so are those
in the left stride of a window while a segment is still open from before. A segment open when the clip ends
has no end timestamp (the pipeline's None; zoo gives the clip's end).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo.tasks._whisper_timestamps import TIME_PRECISION

WINDOW_SECONDS = 30.0
STRIDE_SHARE = 1 / 6  # the pipeline's default stride_length_s: chunk_length_s / 6, on each side


@dataclass(frozen=True)
class Window:
    """Where a window lies in its clip, in seconds: its start and length, and the stride on each side that its
    neighbour hears too (the pipeline's ``stride``; 0 at the clip's ends)."""

    start: float
    length: float
    left: float
    right: float


@dataclass(frozen=True)
class TimedSegment:
    """(start, end) in the clip's seconds, None where no timestamp gave it, and the segment's text tokens."""

    start: float | None
    end: float | None
    tokens: list[int]


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


def timed_join(windows: list[list[int]], places: list[Window], first: int) -> list[TimedSegment]:
    """The clip's segments from its windows' tokens (text and timestamps, ``first`` = ``<|0.00|>``; special tokens
    left out), the windows in order, ``places`` where each lies."""
    segments: list[TimedSegment] = []
    pending: list[list[int]] = []  # the open segment's text, one list per window it has run through
    start: float | None = None
    passing = False  # a passed-over timestamp's pair is passed over too, even in the next window
    for tokens, place in zip(windows, places):
        held = _held_from(tokens, place, first)
        opens = first + place.left / TIME_PRECISION if place.left else first
        text: list[int] = []
        for token in tokens:
            if token < first:
                text.append(token)
            elif held is not None and token >= held:
                passing = True
            elif passing or (pending and token < opens):
                passing = False
            elif start is None:
                start = _seconds(token, first, place)
            elif _seconds(token, first, place) != start:  # an end equal to the start is taken as a start again
                segments.append(TimedSegment(start, _seconds(token, first, place), join([*pending, text])))
                pending, text, start = [], [], None
        if text:
            pending.append(text)
        elif not pending:
            start = None  # a start with no words after it, before the window ends, is forgotten
    if pending:
        segments.append(TimedSegment(start, None, join(pending)))
    return segments


def _seconds(token: int, first: int, place: Window) -> float:
    return round((token - first) * TIME_PRECISION + place.start, 2)


def _held_from(tokens: list[int], place: Window, first: int) -> int | None:
    """The first timestamp left to the next window: the window's last timestamp, or earlier, those from the start
    of the right stride on; None without a right stride."""
    if not place.right:
        return None
    edge = place.length - place.right
    held = None
    for token in reversed(tokens):
        if token >= first:
            if held is not None and (token - first) * TIME_PRECISION < edge:
                break
            held = token
    return held
