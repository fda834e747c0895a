"""Golden files in Megatron's schema: read, validate, build from scalars, write byte-exact.

Schema (one entry per metric):
    {"lm loss": {"start_step": 1, "end_step": 100, "step_interval": 1,
                 "values": {"1": 10.95177, "2": "nan", ...}}, ...}
Values are rounded to 5 decimals; the string "nan" stands for a missing or non-finite value
(Megatron's `_2nd` files hold "nan" before the resume step). Megatron's older schema writes
`values` as a list: entry i is step `start_step + i * step_interval` (a few of its files still do);
such a series remembers it and is written back as a list. Megatron writes
`json.dumps(..., indent=4)` without a trailing newline; older goldens are one compact line.
Both layouts load, and `golden_text` reproduces either one byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from goldtron import trainer_contract as tags
from goldtron.gate.errors import GateInputError

# A golden value: a number, or the string "nan" (missing / non-finite).
Value = Union[float, str]
NAN_TEXT = "nan"
DECIMALS = 5
SERIES_KEYS = ("start_step", "end_step", "step_interval", "values")
Layout = Literal["indented", "compact"]
# The metrics Megatron records in a golden file, in its order.
RECORDED_METRICS = (tags.LM_LOSS, tags.NUM_ZEROS, tags.MEM_ALLOCATED, tags.MEM_MAX_ALLOCATED, tags.ITERATION_TIME)


@dataclass
class MetricSeries:
    """One metric of a golden file: its step grid and value per step (ordered as written)."""

    start_step: int
    end_step: int
    step_interval: int
    values: dict[int, Value] = field(default_factory=dict)
    listed: bool = False  # read from the older list schema; written back the same way

    def numeric(self, step: int) -> float:
        """The value at `step` as a float; missing or "nan" is +inf, as Megatron's checks do."""
        value = self.values.get(step, NAN_TEXT)
        return math.inf if isinstance(value, str) else float(value)


Golden = dict[str, MetricSeries]


def round_value(value: float) -> Value:
    """Megatron's rounding (Python `round`, 5 decimals); non-finite values become "nan"."""
    value = float(value)
    if not math.isfinite(value):
        return NAN_TEXT
    return round(value, DECIMALS)


def _bad(source: str, where: str, problem: str, fix: str) -> GateInputError:
    return GateInputError(f"{source}: {where}: {problem}. Fix: {fix}")


def _parse_int(source: str, metric: str, key: str, raw: object) -> int:
    # bool is an int subclass in Python; `true` is never a step number.
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad(source, f"metric {metric!r} field {key!r}", f"expected an integer, got {raw!r}",
                   f"write {key} as a whole number")
    return raw


def _parse_value(source: str, metric: str, step_text: str, raw: object) -> Value:
    if isinstance(raw, str):
        if raw == NAN_TEXT:
            return NAN_TEXT
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw) if isinstance(raw, int) else raw
    raise _bad(source, f"metric {metric!r} values[{step_text!r}]",
               f"expected a number or \"nan\", got {raw!r}", "write a number, or \"nan\" for a missing step")


def parse_golden(data: object, source: str) -> Golden:
    """Validate a decoded golden JSON document; `source` names it in error messages."""
    if not isinstance(data, dict):
        raise _bad(source, "top level", f"expected an object of metrics, got {type(data).__name__}",
                   'use {"lm loss": {"start_step": ..., "values": {...}}, ...}')
    golden: Golden = {}
    for metric, entry in data.items():
        if not isinstance(entry, dict):
            raise _bad(source, f"metric {metric!r}", f"expected an object, got {type(entry).__name__}",
                       f"give it the keys {', '.join(SERIES_KEYS)}")
        missing = [key for key in SERIES_KEYS if key not in entry]
        if missing:
            raise _bad(source, f"metric {metric!r}", f"missing key(s) {', '.join(missing)}",
                       f"every metric needs {', '.join(SERIES_KEYS)}")
        unknown = sorted(set(entry) - set(SERIES_KEYS))
        if unknown:
            raise _bad(source, f"metric {metric!r}", f"unknown key(s) {', '.join(unknown)}",
                       f"keep only {', '.join(SERIES_KEYS)} (provenance goes in the .provenance.json sidecar)")
        start_step = _parse_int(source, metric, "start_step", entry["start_step"])
        end_step = _parse_int(source, metric, "end_step", entry["end_step"])
        step_interval = _parse_int(source, metric, "step_interval", entry["step_interval"])
        if step_interval <= 0:
            raise _bad(source, f"metric {metric!r} field 'step_interval'", "must be positive",
                       "use 1 for every step, 5 for every fifth")
        raw_values = entry["values"]
        if isinstance(raw_values, list):
            values = _listed_values(source, metric, raw_values, start_step, step_interval)
        elif isinstance(raw_values, dict):
            values = _keyed_values(source, metric, raw_values)
        else:
            raise _bad(source, f"metric {metric!r} field 'values'",
                       f"expected an object step -> value (or the older list), got {type(raw_values).__name__}",
                       'write values as {"1": 10.9, "2": 10.8}')
        golden[metric] = MetricSeries(start_step, end_step, step_interval, values, isinstance(raw_values, list))
    return golden


def _keyed_values(source: str, metric: str, raw_values: dict) -> dict[int, Value]:
    values: dict[int, Value] = {}
    for step_text, raw in raw_values.items():
        try:
            step = int(step_text)
        except ValueError:
            raise _bad(source, f"metric {metric!r} values", f"step key {step_text!r} is not an integer",
                       "key values by iteration number") from None
        values[step] = _parse_value(source, metric, step_text, raw)
    return values


def _listed_values(source: str, metric: str, raw_values: list, start_step: int, step_interval: int) -> dict[int, Value]:
    """The older schema: the i-th value belongs to step start_step + i * step_interval."""
    return {start_step + index * step_interval: _parse_value(source, metric, str(index), raw)
            for index, raw in enumerate(raw_values)}


def read_golden_text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise GateInputError(f"{path}: golden file not found. Fix: check the path, or record one "
                             "with `goldtron test CASE --record`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GateInputError(f"{path}: unreadable ({error}). Fix: repair the file or re-record it") from None


def load_golden(path: Path) -> Golden:
    """Load and validate a golden file; every problem names the file and the field."""
    text = read_golden_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GateInputError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                             f"{error.msg}). Fix: repair the file or re-record it") from None
    return parse_golden(data, str(path))


def detect_layout(text: str) -> Layout:
    """Which of Megatron's two layouts a golden text uses (new files are indented)."""
    return "indented" if text.startswith("{\n") else "compact"


def golden_to_data(golden: Golden) -> dict:
    return {
        metric: {
            "start_step": series.start_step,
            "end_step": series.end_step,
            "step_interval": series.step_interval,
            "values": (list(series.values.values()) if series.listed
                       else {str(step): value for step, value in series.values.items()}),
        }
        for metric, series in golden.items()
    }


def golden_text(golden: Golden, layout: Layout = "indented") -> str:
    """The exact bytes Megatron's writer produces (no trailing newline, as Megatron's files)."""
    data = golden_to_data(golden)
    return json.dumps(data, indent=4) if layout == "indented" else json.dumps(data)


def write_golden(path: Path, golden: Golden, layout: Layout = "indented") -> Path:
    # All or nothing (temporary file, os.replace): an interrupt never leaves half a golden.
    from goldtron.checkpoint.layout import write_file_durably

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_durably(str(path), golden_text(golden, layout))
    return path


def series_from_scalars(scalars: dict[int, float], start_step: int = 1, step_interval: int = 1,
                        last_step: int | None = None) -> MetricSeries | None:
    """Megatron's sampling grid: the start step, then every step divisible by the interval.

    Returns None when no step falls on the grid (Megatron then leaves the metric out).
    """
    chosen = {
        step: round_value(value)
        for step, value in sorted(scalars.items())
        if step >= 1 and (last_step is None or step <= last_step)
        and (step == start_step or (step > start_step and step % step_interval == 0))
    }
    if not chosen:
        return None
    steps = list(chosen)
    return MetricSeries(start_step=steps[0], end_step=steps[-1], step_interval=step_interval,
                        values=chosen)


def golden_from_scalars(scalars: dict[str, dict[int, float]], step_interval: int = 1,
                        last_step: int | None = None, metrics: list[str] | None = None) -> Golden:
    """A golden file from TensorBoard scalars (tag -> step -> value), metrics in the given order."""
    golden: Golden = {}
    for metric in metrics if metrics is not None else list(scalars):
        if metric not in scalars:
            continue
        series = series_from_scalars(scalars[metric], step_interval=step_interval, last_step=last_step)
        if series is not None:
            golden[metric] = series
    return golden


def pad_before(series: MetricSeries, first_step: int, start_step: int = 1) -> MetricSeries:
    """A `_2nd` series: "nan" on every step before `first_step` (run 2 did not train them)."""
    values: dict[int, Value] = {step: NAN_TEXT for step in range(start_step, first_step)
                                if step == start_step or step % series.step_interval == 0}
    values.update({step: value for step, value in series.values.items() if step >= first_step})
    steps = sorted(values)
    return MetricSeries(start_step=steps[0], end_step=steps[-1], step_interval=series.step_interval,
                        values={step: values[step] for step in steps})
