"""The suite's launches side by side (support/torchrun.py in_lanes): one lane per process count,
each outcome kept, nothing run after a failure in its own lane."""

import threading

import pytest

from support.torchrun import NOT_RUN, in_lanes, raise_first


def test_each_process_count_runs_beside_the_others():
    started = {1: threading.Event(), 2: threading.Event()}

    def launch(nproc):
        def run():
            started[nproc].set()
            return nproc
        return run

    def four_ranks():
        # Lanes in turn would run this first and wait here forever: 10 s fails the test instead.
        for nproc, event in started.items():
            assert event.wait(timeout=10), f"the {nproc}-process launch did not start beside this one"
        return 4

    assert in_lanes([(4, four_ranks), (1, launch(1)), (2, launch(2))]) == [4, 1, 2]


def test_a_failure_stops_its_lane_only_and_is_raised():
    ran = []

    def fail():
        raise AssertionError("rank 1 died")

    def record(name):
        return lambda: ran.append(name) or name

    outcomes = in_lanes([(1, fail), (1, record("after the failure")), (2, record("other lane"))])
    assert isinstance(outcomes[0], AssertionError) and outcomes[1] is NOT_RUN and outcomes[2] == "other lane"
    assert ran == ["other lane"]
    with pytest.raises(AssertionError, match="rank 1 died"):
        raise_first(outcomes)


def test_one_lane_runs_in_order_and_nothing_is_nothing():
    order = []
    assert in_lanes([(1, lambda: order.append(1)), (1, lambda: order.append(2))]) == [None, None]
    assert order == [1, 2]
    assert in_lanes([]) == []
