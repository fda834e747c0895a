"""Full-precision per-step values as JSON lines (`GOLDTRON_METRICS_FILE=path`, read once in main).

TensorBoard stores scalars as float32; bitwise resume checks and layout comparisons need the
float64 numbers this process computed.
"""

from __future__ import annotations

import json

METRICS_FILE_ENV = "GOLDTRON_METRICS_FILE"


class MetricsFile:
    """Appends one JSON line per step to `path`; does nothing when `path` is None."""

    def __init__(self, path: str | None):
        self.path = path or None

    def write(self, iteration: int, values: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"iteration": iteration, **values}) + "\n")
