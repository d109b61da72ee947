"""The per-thread-count report of the decoding benchmarks (bench_generate.py, bench_quantize_lm.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def print_threads(threads: int, entry: dict[str, Any], note: Callable[[str, dict[str, Any]], str],
                  headline: str = "") -> None:
    """A heading (with ``headline`` after it), one line per engine ending in ``(note(name, figures))``, the ratios."""
    print(f"\n== {threads} thread{'s' if threads > 1 else ''}{headline}")
    for name, fig in entry["engines"].items():
        print(f"  {name:<26} prefill {fig['prefill_ms']:8.1f} ms   decode {fig['decode_tokens_per_s']:6.1f} tok/s"
              f"   ({note(name, fig)})")
    for name, value in entry["ratios"].items():
        print(f"  {name}: {value:.2f}")
