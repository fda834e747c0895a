"""Megatron's pass rules, rule by rule, at their edges."""

from __future__ import annotations

import math

import pytest

from goldtron.gate.checks import (
    Check, allowed_failures, checks_for, judge, restrict, run_check, steady_window_steps,
)
from goldtron.gate.errors import GateInputError

from .conftest import series

APPROX_5 = Check("approximate", rtol=0.05)
EXACT = Check("exact")


def flat(n: int, value: float = 10.0) -> dict[int, float]:
    return {step: value for step in range(1, n + 1)}


@pytest.mark.parametrize("steps, budget", [(1, 1), (99, 1), (100, 1), (199, 1), (200, 2), (5000, 50), (9999, 50)])
def test_failure_budget(steps, budget):
    assert allowed_failures(steps) == budget


def off_steps(n: int, bad: int) -> tuple:
    golden = flat(n)
    actual = dict(golden)
    for step in range(1, bad + 1):
        actual[step] = 20.0  # 100% off: outside any tolerance used here
    return series(golden), series(actual)


@pytest.mark.parametrize("n, bad, passes", [
    (100, 1, True), (100, 2, False),    # k = 1
    (250, 2, True), (250, 3, False),    # k = 2
    (20, 1, True), (20, 2, False),      # short runs still get one step of slack
])
def test_approximate_budget_boundary(n, bad, passes):
    golden, actual = off_steps(n, bad)
    result = run_check("lm loss", APPROX_5, golden, actual)
    assert (result.status == "pass") is passes
    assert result.steps_failed == bad and result.first_divergence == 1


def test_exact_check_allows_no_failing_step():
    golden, actual = off_steps(200, 1)
    assert run_check("lm loss", EXACT, golden, actual).status == "fail"
    assert run_check("lm loss", EXACT, golden, golden).status == "pass"


def test_relative_tolerance_edge_is_inclusive():
    # 10.5 vs 10.0 is exactly 5% off; binary floats make 0.05 * 10 == 0.5 exactly.
    golden = series({1: 10.0})
    assert run_check("lm loss", APPROX_5, golden, series({1: 10.5})).status == "pass"
    assert run_check("lm loss", APPROX_5, golden, series({1: 10.5001})).status == "fail"


def test_nan_on_both_sides_matches_and_on_one_side_fails():
    golden = series({1: "nan", 2: 1.0})
    assert run_check("lm loss", EXACT, golden, series({1: "nan", 2: 1.0})).status == "pass"
    assert run_check("lm loss", EXACT, golden, series({2: 1.0})).status == "pass"  # missing == nan
    result = run_check("lm loss", EXACT, series({1: 1.0, 2: 1.0}), series({1: "nan", 2: 1.0}))
    assert result.status == "fail" and result.first_divergence == 1 and math.isinf(result.worst_difference)
    assert run_check("lm loss", EXACT, series({1: "nan"}), series({1: 1.0})).status == "fail"


def test_the_worst_step_shown_has_values_when_a_2nd_golden_starts_with_missing_steps():
    # A _2nd golden holds "nan" before the resume and run 2 has no such steps: equal, but not
    # what the report's worst-step columns should show when every step matches.
    golden = series({1: "nan", 2: "nan", 3: 9.5, 4: 9.25})
    result = run_check("lm loss", APPROX_5, golden, series({3: 9.5, 4: 9.25}))
    assert result.status == "pass" and (result.worst_step, result.worst_actual) == (3, 9.5)
    nearly = run_check("lm loss", APPROX_5, golden, series({3: 9.5, 4: 9.3}))
    assert nearly.worst_step == 4  # a real difference still wins


def test_steps_compared_are_the_golden_steps():
    golden = series({1: 1.0, 5: 1.0, 10: 1.0}, interval=5)
    actual = series({step: 1.0 for step in range(1, 11)})
    result = run_check("lm loss", EXACT, golden, actual)
    assert result.status == "pass" and result.steps_compared == 3


def test_iteration_time_median_short_window():
    # Golden ends at step 20 (<= 25): window 5..20. Steps 1-4 are warm-up and ignored.
    golden = series({step: (9.0 if step < 5 else 1.0) for step in range(1, 21)})
    assert steady_window_steps(golden) == list(range(5, 21))
    actual_values = {step: 1.0 for step in range(1, 21)}
    actual_values[7] = 50.0  # one slow step does not move the median
    result = run_check("iteration-time", APPROX_5, golden, series(actual_values))
    assert result.status == "pass" and result.steps_compared == 1
    slow = series({step: 1.06 for step in range(1, 21)})
    assert run_check("iteration-time", APPROX_5, golden, slow).status == "fail"


def test_iteration_time_long_window_and_fallback():
    golden = series({step: float(step) for step in range(1, 101)})
    assert steady_window_steps(golden) == list(range(30, 46))
    # A resumed run-2 reference starts after the window: the first four finite steps from 30.
    late = series({step: 1.0 for step in range(51, 101)})
    assert steady_window_steps(late) == [51, 52, 53, 54]
    # "nan" at the first logged step (no iteration-time on a run's first iteration) is skipped.
    assert steady_window_steps(series({1: "nan", **{s: 1.0 for s in range(2, 21)}})) == list(range(5, 21))


def test_iteration_time_even_median():
    golden = series({5: 1.0, 6: 3.0})  # median 2.0
    assert run_check("iteration-time", APPROX_5, golden, series({5: 2.0, 6: 2.0})).status == "pass"


def test_metric_missing_from_run_is_an_error():
    verdict = judge({"lm loss": series(flat(3))}, {"num-zeros": series(flat(3))}, ["lm loss"])
    assert not verdict.passed
    assert {r.status for r in verdict.results} == {"error"}
    assert "not found in the run" in verdict.results[0].message


def test_metric_missing_from_golden_is_an_error():
    verdict = judge({}, {"lm loss": series(flat(3))}, ["lm loss"])
    assert not verdict.passed and "not in the golden" in verdict.results[0].message


def test_empty_golden_series_is_an_error():
    golden = {"lm loss": series(flat(2))}
    golden["lm loss"].values = {}
    verdict = judge(golden, {"lm loss": series(flat(2))}, ["lm loss"])
    assert {r.status for r in verdict.results} == {"error"}


def test_nondeterministic_skips_exact_checks_only():
    golden = series(flat(100))
    actual = series({**flat(100), 3: 10.01})  # 0.1% off: exact fails, approximate passes
    strict = judge({"lm loss": golden}, {"lm loss": actual}, ["lm loss"])
    assert not strict.passed
    loose = judge({"lm loss": golden}, {"lm loss": actual}, ["lm loss"], deterministic=False)
    assert loose.passed and [r.status for r in loose.results] == ["skip", "pass"]


def test_default_thresholds_are_megatrons():
    assert checks_for("lm loss") == (EXACT, Check("approximate", rtol=0.05))
    assert checks_for("num-zeros") == (EXACT, Check("approximate", rtol=0.20))
    for metric in ("iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes"):
        assert checks_for(metric) == (Check("approximate", rtol=0.05),)


def test_tolerance_overrides():
    assert checks_for("lm loss", {"lm loss": {"approx_rtol": 0.01, "exact": False}}) == (Check("approximate", rtol=0.01),)
    assert checks_for("grad-norm", {"grad-norm": {"approx_rtol": 0.1}}) == (EXACT, Check("approximate", rtol=0.1))[1:]
    with pytest.raises(GateInputError, match="grad-norm"):
        checks_for("grad-norm")
    with pytest.raises(GateInputError, match="allowed keys"):
        checks_for("lm loss", {"lm loss": {"rtol": 0.1}})
    with pytest.raises(GateInputError, match="non-negative"):
        checks_for("lm loss", {"lm loss": {"approx_rtol": "x"}})


def test_first_divergence_names_the_earliest_failing_step():
    golden = {"lm loss": series(flat(10)), "num-zeros": series(flat(10))}
    actual = {"lm loss": series({**flat(10), 7: 12.0, 8: 12.0}), "num-zeros": series({**flat(10), 4: 11.0})}
    verdict = judge(golden, actual, ["lm loss", "num-zeros"])
    assert verdict.first_divergence() == ("num-zeros", 4)


def test_band_check_uses_mean_and_sigmas():
    bands = {"lm loss": {1: (10.0, 0.1), 2: (9.0, 0.1)}}
    inside = {"lm loss": series({1: 10.25, 2: 9.0})}
    # Bands get the approximate failure budget (one step here), so both steps leave the band.
    outside = {"lm loss": series({1: 10.35, 2: 9.35})}
    tolerances = {"lm loss": {"exact": False}}
    assert judge({}, inside, ["lm loss"], tolerances, bands=bands, band_sigmas=3).passed
    verdict = judge({}, outside, ["lm loss"], tolerances, bands=bands, band_sigmas=3)
    assert not verdict.passed and verdict.results[0].first_divergence == 1


def test_restrict_keeps_steps_from_resume_on():
    golden = {"lm loss": series(flat(10))}
    assert list(restrict(golden, 6)["lm loss"].values) == [6, 7, 8, 9, 10]
