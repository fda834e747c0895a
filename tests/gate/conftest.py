"""Shared helpers of the gate's tests: the reference folder and small golden builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from goldtron.gate.golden import MetricSeries

REFERENCE = Path("/work/shared/reference/megatron")
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"Megatron reference cases not present at {REFERENCE}")
    return REFERENCE


def series(values: dict[int, float | str], interval: int = 1) -> MetricSeries:
    steps = sorted(values)
    return MetricSeries(steps[0], steps[-1], interval, dict(sorted(values.items())))
