"""benchmarks/bench_vs_optimum.py: a run of some models adds their rows and keeps the others' (issue 26)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench() -> Any:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `machine`, as when run from the shell
    try:
        import bench_vs_optimum
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_vs_optimum


def test_a_run_of_one_model_keeps_the_earlier_rows_with_their_date(tmp_path: Path) -> None:
    out = tmp_path / "vs_optimum.json"
    out.write_text(json.dumps({"created": "day 2", "machine": {"load_average": [9.0]},
                               "models": {"resnet": {"latency_ms": {"8": {"zoo": 2.0}}}},
                               "earlier_runs": {"minilm": {"created": "day 1", "latency_ms": {"1 x 32": {"zoo": 1.0}}},
                                                "vit": {"created": "day 1", "latency_ms": {}}}}))
    kept = _bench().earlier_models(out, ["vit"])
    assert sorted(kept) == ["minilm", "resnet"]  # vit is measured again, so its old row goes
    assert kept["minilm"]["created"] == "day 1" and kept["minilm"]["latency_ms"] == {"1 x 32": {"zoo": 1.0}}
    assert kept["resnet"] == {"created": "day 2", "machine": {"load_average": [9.0]},
                              "latency_ms": {"8": {"zoo": 2.0}}}


def test_a_first_run_or_an_unreadable_file_keeps_nothing(tmp_path: Path) -> None:
    bench = _bench()
    assert bench.earlier_models(tmp_path / "absent.json", ["resnet"]) == {}
    (tmp_path / "half.json").write_text('{"models": {')
    assert bench.earlier_models(tmp_path / "half.json", ["resnet"]) == {}


def test_cpu_timed_records_one_sample_per_call_and_passes_the_call_through() -> None:
    ran: list[int] = []
    used: list[float] = []
    call = _bench().cpu_timed(lambda: ran.append(1), used)
    for _ in range(3):
        call()
    assert len(ran) == 3 and len(used) == 3 and all(seconds >= 0.0 for seconds in used)
