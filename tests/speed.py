"""Fake timings for the speed gate of zoo optimize: tests never time this machine, whose load and CPU vary.

Test modules import ``twice_as_fast`` (autouse: every test there sees a candidate twice as fast) and swap in
``fake_speed(factor)`` where speed is what they test.
"""

from __future__ import annotations

import pytest

from exporters import gates

REAL_MEASURE_SPEED = gates.measure_speed  # kept before the autouse fixture replaces it


def fake_speed(factor: float):
    """A measure_speed stand-in: every contender takes 1/factor of the parent's 10 ms at every shape."""
    def measure(parent, contenders, shapes, providers=None, torch_call=None):
        return [[gates.SpeedFigure(shape, 10.0, 10.0 / factor) for shape in shapes] for _ in contenders]

    return measure


@pytest.fixture(autouse=True)
def twice_as_fast(monkeypatch):
    monkeypatch.setattr(gates, "measure_speed", fake_speed(2.0))
