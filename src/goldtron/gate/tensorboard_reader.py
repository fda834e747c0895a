"""Read a run's TensorBoard scalars (tag -> step -> value) the way Megatron's gate does.

Event files in the folder are read oldest first; when two files hold the same tag and step
the first one wins (Megatron's rule, so a restarted writer cannot overwrite history).
"""

from __future__ import annotations

import os
from pathlib import Path

from goldtron.gate.errors import GateInputError


def event_files(log_dir: Path) -> list[Path]:
    log_dir = Path(log_dir)
    files = [path for path in log_dir.glob("events*tfevents*") if path.is_file()]
    return sorted(files, key=lambda path: (os.path.getmtime(path), path.name))


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """All scalars under `log_dir` (not recursive). Raises if there is no event file."""
    # Imported here: tensorboard's import costs ~1 s and only judging needs it.
    from tensorboard.backend.event_processing import event_accumulator

    log_dir = Path(log_dir)
    files = event_files(log_dir)
    if not files:
        raise GateInputError(f"{log_dir}: no TensorBoard event file (events*tfevents*). Fix: point at "
                             "the run's --tensorboard-dir, and check that the trainer wrote scalars")
    scalars: dict[str, dict[int, float]] = {}
    for path in files:
        accumulator = event_accumulator.EventAccumulator(
            str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series = scalars.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                series.setdefault(int(event.step), float(event.value))
    return scalars
