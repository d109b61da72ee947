"""Export collects its per-case garbage without walking the whole heap (issue 26: export + verify time).

``exporters.memory.frozen_heap`` freezes what is alive when the export's stages start, so the
collections after each grid case walk only what the export made since; these tests check that
such garbage is still collected, that the freeze ends with the export (also when it fails), and
that a caller's own freeze is left alone. ``collection_paused`` keeps automatic collections out of
the model's build and the exporter's tracing, and collects once as it ends.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from exporters.memory import collection_paused, frozen_heap


class Node:
    """A reference cycle's member: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def _dropped_cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_frozen_heap_still_collects_garbage_made_before_and_inside_the_block() -> None:
    assert gc.get_freeze_count() == 0
    before = _dropped_cycle()
    with frozen_heap():
        assert before() is None  # collected on entry, not frozen for the block's life
        assert gc.get_freeze_count() > 0
        inside = _dropped_cycle()
        assert inside() is not None
        gc.collect()
        assert inside() is None
    assert gc.get_freeze_count() == 0


def test_frozen_heap_leaves_a_callers_own_freeze_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # the count itself is no witness: frozen objects that die (another test's thread ending) leave the
    # permanent generation at any time, so what is checked is that nothing is frozen or unfrozen again
    calls: list[str] = []
    gc.freeze()
    try:
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        with frozen_heap():
            assert gc.get_freeze_count() > 0
        assert calls == []  # not unfrozen under the caller
        calls.clear()
        monkeypatch.setattr(gc, "get_freeze_count", lambda: 0)  # the twin: with no caller's freeze it does both
        with frozen_heap():
            pass
        assert calls == ["freeze", "unfreeze"]
    finally:
        monkeypatch.undo()
        gc.unfreeze()


def test_export_stages_run_frozen_and_a_failed_export_unfreezes(tiny_text_classifier: Path, tmp_path: Path,
                                                                 monkeypatch: Any) -> None:
    import exporters.onnx
    from exporters.onnx import export_onnx

    seen: list[int] = []
    building: list[bool] = []
    real_build = exporters.onnx.build_source

    def watched_build(*args: Any, **kwargs: Any) -> Any:
        building.append(gc.isenabled())
        return real_build(*args, **kwargs)

    def failing_references(*_: Any, **__: Any) -> Any:
        seen.append(gc.get_freeze_count())
        building.append(gc.isenabled())
        raise RuntimeError("planted: torch failed")

    monkeypatch.setattr(exporters.onnx, "build_source", watched_build)
    monkeypatch.setattr(exporters.onnx, "torch_references", failing_references)
    with pytest.raises(RuntimeError, match="planted"):
        export_onnx(str(tiny_text_classifier), out=tmp_path / "out")
    assert seen and seen[0] > 0  # the grid ran with the model's heap frozen
    assert building == [False, True]  # the build ran without automatic collections; they resumed after it
    assert gc.get_freeze_count() == 0
    assert not (tmp_path / "out").exists()


def test_collection_paused_collects_once_as_it_ends_also_when_the_block_fails() -> None:
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        inside = _dropped_cycle()
        made = [[] for _ in range(20 * gc.get_threshold()[0])]  # enough to start many automatic passes ...
        assert inside() is not None and made  # ... but none ran
    assert inside() is None and gc.isenabled()  # the collection as the block ends freed the cycle
    with pytest.raises(RuntimeError, match="planted"), collection_paused():
        failed = _dropped_cycle()
        raise RuntimeError("planted")
    assert failed() is None and gc.isenabled()


def test_collection_paused_leaves_a_callers_disabled_collector_off() -> None:
    gc.disable()
    try:
        with collection_paused():
            kept = _dropped_cycle()
        assert kept() is None and not gc.isenabled()  # collected once, still off for the caller
    finally:
        gc.enable()
