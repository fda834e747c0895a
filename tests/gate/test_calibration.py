"""The gate's Calibrator: one helper process gives both timings of a case, and ends with it."""

from __future__ import annotations

import pytest

from goldtron.gate.calibration import WORKLOAD, Calibrator


def test_one_helper_times_before_and_after_and_ends_when_closed():
    with Calibrator() as calibrator:
        first = calibrator.time()
        helper = calibrator.process
        second = calibrator.time()
        assert calibrator.process is helper  # no second interpreter start and torch import
    assert helper.returncode == 0  # its stdin closed: it ended on its own
    for timing in (first, second):
        assert timing["workload"] == WORKLOAD and 0 < timing["seconds"] < 600  # a bound against a hang only


def test_a_helper_that_dies_is_an_error_saying_so():
    with pytest.raises(RuntimeError, match=r"calibration workload failed: the helper ended \(exit 1\)"):
        Calibrator("false").time()
