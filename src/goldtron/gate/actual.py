"""Load "what a run produced" from either a TensorBoard folder or a golden-schema JSON file."""

from __future__ import annotations

from pathlib import Path

from goldtron.gate.golden import Golden, golden_from_scalars, load_golden
from goldtron.gate.tensorboard_reader import read_scalars


def load_actual(path: Path, last_step: int | None = None) -> Golden:
    """A run's values on every logged step (5-decimal rounded, as a golden would hold them)."""
    path = Path(path)
    if path.is_dir():
        return golden_from_scalars(read_scalars(path), step_interval=1, last_step=last_step)
    return load_golden(path)
