"""Megatron's pass rules, exactly, plus goldtron's per-case overrides and statistical bands.

Rules (Megatron's functional tests):
- The steps compared are the reference's steps; a step missing from the run, or "nan" on
  either side, is +inf. inf equals inf (numpy's isclose), so "nan" on both sides matches.
- A step passes when |actual - reference| <= atol + rtol * |reference|.
- Exact checks (rtol = atol = 0) must pass on every step.
- Approximate checks over n steps may fail k = min(max(n // 100, 1), 50) steps: the passing
  fraction must be at least 1 - k/n. With n = 1 the single step must pass.
- `iteration-time` compares one number: the median over the steady window (steps 5-20, or
  30-45 when the reference's last finite step is past 25; if none fall in it, the first four
  finite steps from the window's start).
- A checked metric absent from the run, or with no values in the reference, is an error.
- Exact checks are skipped when the run is non-deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from goldtron import trainer_contract as tags
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import Golden, MetricSeries

CheckKind = Literal["exact", "approximate", "band"]
Status = Literal["pass", "fail", "skip", "error"]
DEFAULT_METRICS = (tags.LM_LOSS, tags.NUM_ZEROS)
MEDIAN_METRIC = tags.ITERATION_TIME


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    rtol: float = 0.0
    atol: float = 0.0
    sigmas: float = 0.0  # only for "band": allowed distance in standard deviations

    def describe(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "band":
            return f"mean ± {self.sigmas:g}σ"
        text = f"rtol {self.rtol:g}"
        return text + (f", atol {self.atol:g}" if self.atol else "")


# Megatron's thresholds per metric.
DEFAULT_CHECKS: dict[str, tuple[Check, ...]] = {
    tags.LM_LOSS: (Check("exact"), Check("approximate", rtol=0.05)),
    tags.NUM_ZEROS: (Check("exact"), Check("approximate", rtol=0.20)),
    tags.ITERATION_TIME: (Check("approximate", rtol=0.05),),
    tags.MEM_ALLOCATED: (Check("approximate", rtol=0.05),),
    tags.MEM_MAX_ALLOCATED: (Check("approximate", rtol=0.05),),
}
OVERRIDE_KEYS = ("exact", "approx_rtol", "approx_atol")


def checks_for(metric: str, overrides: dict[str, dict] | None = None, source: str = "tolerances") -> tuple[Check, ...]:
    """The checks of one metric: Megatron's defaults, changed by a case's TOLERANCES entry.

    An override may set `exact` (bool), `approx_rtol` and `approx_atol` (numbers). A metric
    Megatron has no thresholds for needs an override, otherwise the case is rejected.
    """
    override = (overrides or {}).get(metric)
    base = DEFAULT_CHECKS.get(metric)
    if override is None:
        if base is None:
            raise GateInputError(
                f"{source}: metric {metric!r} has no default thresholds. Fix: add "
                f"GOLDTRON: {{TOLERANCES: {{{metric!r}: {{approx_rtol: 0.05}}}}}} to the case, or drop it from METRICS")
        return base
    if not isinstance(override, dict) or set(override) - set(OVERRIDE_KEYS):
        raise GateInputError(f"{source}: TOLERANCES[{metric!r}] = {override!r}: allowed keys are "
                             f"{', '.join(OVERRIDE_KEYS)}. Fix: e.g. {{approx_rtol: 0.05, exact: false}}")
    base = base or ()
    exact = override.get("exact", any(check.kind == "exact" for check in base))
    approx = next((check for check in base if check.kind == "approximate"), Check("approximate", rtol=0.05))
    for key in ("approx_rtol", "approx_atol"):
        value = override.get(key)
        if key in override and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise GateInputError(f"{source}: TOLERANCES[{metric!r}].{key} = {value!r}: expected a "
                                 "non-negative number. Fix: e.g. 0.05")
    approx = replace(approx, rtol=float(override.get("approx_rtol", approx.rtol)),
                     atol=float(override.get("approx_atol", approx.atol)))
    if not isinstance(exact, bool):
        raise GateInputError(f"{source}: TOLERANCES[{metric!r}].exact = {exact!r}: expected true or false")
    return ((Check("exact"),) if exact else ()) + (approx,)


def allowed_failures(steps: int) -> int:
    """Megatron's failure budget for an approximate check over `steps` steps."""
    return min(max(steps // 100, 1), 50)


def steady_window_steps(reference: MetricSeries) -> list[int]:
    """The steps whose median `iteration-time` compares (see the module docstring)."""
    finite = sorted(step for step, value in reference.values.items()
                    if not isinstance(value, str) and math.isfinite(value))
    if not finite:
        return []
    window = range(5, 21) if finite[-1] <= 25 else range(30, 46)
    inside = [step for step in finite if step in window]
    return inside or [step for step in finite if step >= window.start][:4]


def _is_close(actual: float, reference: float, rtol: float, atol: float) -> bool:
    # numpy.isclose semantics: equal infinities are close; otherwise inf is never close.
    if math.isinf(actual) or math.isinf(reference):
        return actual == reference
    return abs(actual - reference) <= atol + rtol * abs(reference)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass
class CheckResult:
    """The outcome of one check of one metric, with what a report needs to explain it."""

    metric: str
    check: Check
    status: Status
    steps_compared: int = 0
    steps_failed: int = 0
    failures_allowed: int = 0
    worst_step: int | None = None
    worst_actual: float | None = None
    worst_reference: float | None = None
    worst_difference: float | None = None  # |actual - reference| (relative for approx checks)
    first_divergence: int | None = None     # first step outside this check's tolerance
    message: str = ""
    reference_name: str = "golden"

    @property
    def tolerance(self) -> str:
        return self.check.describe()


@dataclass
class Verdict:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.status in ("pass", "skip") for result in self.results)

    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if result.status in ("fail", "error")]

    def first_divergence(self) -> tuple[str, int] | None:
        """(metric, step) of the earliest step where any failed check leaves its reference."""
        points = [(result.first_divergence, result.metric) for result in self.failures()
                  if result.first_divergence is not None]
        if not points:
            return None
        step, metric = min(points)
        return metric, step


def relative_difference(actual: float, reference: float) -> float:
    """|actual - reference| / |reference|; 0 when equal, inf when either is inf or reference is 0."""
    if actual == reference:
        return 0.0
    if math.isinf(actual) or math.isinf(reference):
        return math.inf
    return abs(actual - reference) / abs(reference) if reference else math.inf


def _difference(kind: CheckKind, actual: float, reference: float) -> float:
    """What the report shows as a step's difference: absolute for exact checks, relative otherwise."""
    if kind != "exact":
        return relative_difference(actual, reference)
    if actual == reference:
        return 0.0
    return abs(actual - reference) if math.isfinite(actual) and math.isfinite(reference) else math.inf


def run_check(metric: str, check: Check, reference: MetricSeries, actual: MetricSeries,
              reference_name: str = "golden", bands: dict[int, tuple[float, float]] | None = None) -> CheckResult:
    """Apply one check to one metric. `bands` (step -> (mean, std)) is used by band checks."""
    result = CheckResult(metric, check, "pass", reference_name=reference_name)
    if not reference.values:
        result.status, result.message = "error", f"{metric}: the {reference_name} has no values"
        return result
    if metric == MEDIAN_METRIC and check.kind != "band":
        steps = steady_window_steps(reference)
        if not steps:
            result.status, result.message = "error", f"{metric}: the {reference_name} has no finite values"
            return result
        pairs = [(steps[0], _median([actual.numeric(s) for s in steps]),
                  _median([reference.numeric(s) for s in steps]))]
    else:
        pairs = [(step, actual.numeric(step), reference.numeric(step)) for step in reference.values]
    failed: list[int] = []
    worst: tuple[float, int, float, float] | None = None
    for step, actual_value, reference_value in pairs:
        if check.kind == "band":
            mean, std = (bands or {}).get(step, (math.inf, 0.0))
            close = _is_close(actual_value, mean, 0.0, check.sigmas * std + check.atol)
            reference_value = mean
        else:
            close = _is_close(actual_value, reference_value, check.rtol, check.atol)
        distance = _difference(check.kind, actual_value, reference_value)
        if not close:
            failed.append(step)
        # A step missing on both sides (a _2nd golden's steps before the resume) equals itself;
        # the worst step shown is one with a value wherever there is one.
        shown = (distance, math.isfinite(actual_value) or math.isfinite(reference_value))
        if worst is None or shown > (worst[0], math.isfinite(worst[2]) or math.isfinite(worst[3])):
            worst = (distance, step, actual_value, reference_value)
    result.steps_compared = len(pairs)
    result.steps_failed = len(failed)
    result.first_divergence = failed[0] if failed else None
    if worst is not None:
        result.worst_difference, result.worst_step, result.worst_actual, result.worst_reference = worst
    if check.kind == "exact" or len(pairs) == 1:
        result.failures_allowed = 0
        passing = not failed
    else:
        result.failures_allowed = allowed_failures(len(pairs))
        passing = (len(pairs) - len(failed)) / len(pairs) >= 1 - result.failures_allowed / len(pairs)
    result.status = "pass" if passing else "fail"
    label = "median of steady window" if metric == MEDIAN_METRIC and check.kind != "band" else f"{len(pairs)} steps"
    result.message = (f"{check.kind} check of {metric!r} vs {reference_name}: {result.status.upper()} "
                      f"({len(failed)} of {label} outside {check.describe()}, {result.failures_allowed} allowed)")
    if failed:
        result.message += f"; first diverging step {failed[0]}"
    return result


def judge(reference: Golden, actual: Golden, metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS,
          tolerances: dict[str, dict] | None = None, deterministic: bool = True,
          reference_name: str = "golden", bands: dict[str, dict[int, tuple[float, float]]] | None = None,
          band_sigmas: float = 0.0, source: str = "tolerances") -> Verdict:
    """All checks of all `metrics`: Megatron's `pipeline`, with a result per check instead of
    an assert. With `bands`, each metric found there is judged by mean ± `band_sigmas`·std."""
    verdict = Verdict()
    for metric in metrics:
        checks = checks_for(metric, tolerances, source)
        if bands is not None and metric in bands:
            checks = tuple(c for c in checks if c.kind == "exact") + (Check("band", sigmas=band_sigmas),)
        if metric not in actual:
            for check in checks:
                verdict.results.append(CheckResult(
                    metric, check, "error", reference_name=reference_name,
                    message=f"metric {metric!r} not found in the run's TensorBoard logs; "
                            "make the trainer log it (e.g. --log-num-zeros-in-grad)"))
            continue
        if metric not in reference and check_needs_reference(checks):
            for check in checks:
                verdict.results.append(CheckResult(
                    metric, check, "error", reference_name=reference_name,
                    message=f"metric {metric!r} is not in the {reference_name}; re-record it or drop it from METRICS"))
            continue
        for check in checks:
            if check.kind == "exact" and not deterministic:
                verdict.results.append(CheckResult(metric, check, "skip", reference_name=reference_name,
                                                   message="exact check skipped: run is non-deterministic"))
                continue
            series = reference.get(metric) or _band_grid(bands[metric])
            verdict.results.append(run_check(metric, check, series, actual[metric], reference_name,
                                             (bands or {}).get(metric)))
    return verdict


def check_needs_reference(checks: tuple[Check, ...]) -> bool:
    return any(check.kind != "band" for check in checks)


def _band_grid(band: dict[int, tuple[float, float]]) -> MetricSeries:
    steps = sorted(band)
    return MetricSeries(steps[0], steps[-1], 1, {step: band[step][0] for step in steps})


def restrict(golden: Golden, first_step: int) -> Golden:
    """Only the steps at or after `first_step` (run 2 of ckpt-resume vs run 1)."""
    out: Golden = {}
    for metric, series in golden.items():
        values = {step: value for step, value in series.values.items() if step >= first_step}
        if values:
            steps = sorted(values)
            out[metric] = MetricSeries(steps[0], steps[-1], series.step_interval, values)
    return out
