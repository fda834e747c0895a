"""Statistics over repeated runs (Megatron's N_REPEAT, turned into numbers offline).

`run_statistics` turns N golden-schema runs into per-step mean/min/max/std and a suggested
relative tolerance per metric (the largest relative deviation from the mean, x 1.5, as
Megatron suggests). A case may then be judged by mean ± k·std bands from such a file
(GOLDTRON.BANDS) instead of flat tolerances.

File layout:
    {"lm loss": {"runs": 5, "suggested_rtol": 0.0031,
                 "steps": {"1": {"mean": 10.9, "std": 0.01, "min": 10.89, "max": 10.91, "n": 5}, ...}}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import Golden

SAFETY_FACTOR = 1.5


def run_statistics(runs: list[Golden]) -> dict:
    if len(runs) < 2:
        raise GateInputError("golden stats needs at least two runs to measure spread")
    metrics = [metric for metric in runs[0] if all(metric in run for run in runs)]
    out: dict = {}
    for metric in metrics:
        steps = sorted({step for run in runs for step in run[metric].values})
        per_step, worst = {}, 0.0
        for step in steps:
            values = [run[metric].numeric(step) for run in runs]
            values = [value for value in values if math.isfinite(value)]
            if not values:
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))
            per_step[str(step)] = {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}
            if mean:
                worst = max(worst, max(abs(value - mean) for value in values) / abs(mean))
        out[metric] = {"runs": len(runs), "suggested_rtol": worst * SAFETY_FACTOR, "steps": per_step}
    return out


def write_statistics(path: Path, statistics: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(statistics, indent=4) + "\n")
    return path


def load_bands(path: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """metric -> step -> (mean, std) from a `golden stats` file; errors name the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateInputError(f"{path}: statistics file not found. Fix: make it with "
                             "`goldtron golden stats RUN.json ... --out FILE`") from None
    except json.JSONDecodeError as error:
        raise GateInputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise GateInputError(f"{path}: expected an object of metrics")
    bands: dict[str, dict[int, tuple[float, float]]] = {}
    for metric, entry in data.items():
        try:
            bands[metric] = {int(step): (float(cell["mean"]), float(cell["std"]))
                             for step, cell in entry["steps"].items()}
        except (KeyError, TypeError, ValueError) as error:
            raise GateInputError(f"{path}: metric {metric!r}: malformed steps ({error!r}). Fix: regenerate "
                                 "it with `goldtron golden stats`") from None
    return bands
