"""The suite's launches in two lanes (support/torchrun.py in_two_lanes): one-process launches
beside the others, each outcome kept, nothing after a failure in its own lane."""

import threading

import pytest

from support.torchrun import NOT_RUN, in_two_lanes, raise_first


def test_one_process_launches_run_beside_the_others():
    started = threading.Event()

    def alone():
        started.set()
        return "alone"

    def four_ranks():
        # Sequential lanes would run this first and wait here forever: 10 s fails the test instead.
        assert started.wait(timeout=10), "the one-process launch did not start beside this one"
        return "four"

    assert in_two_lanes([(4, four_ranks), (1, alone)]) == ["four", "alone"]


def test_a_failure_stops_its_lane_only_and_is_raised():
    ran = []

    def fail():
        raise AssertionError("rank 1 died")

    def record(name):
        return lambda: ran.append(name) or name

    outcomes = in_two_lanes([(1, fail), (1, record("after the failure")), (2, record("other lane"))])
    assert isinstance(outcomes[0], AssertionError) and outcomes[1] is NOT_RUN and outcomes[2] == "other lane"
    assert ran == ["other lane"]
    with pytest.raises(AssertionError, match="rank 1 died"):
        raise_first(outcomes)


def test_one_kind_alone_runs_in_order_here():
    order = []
    assert in_two_lanes([(1, lambda: order.append(1)), (1, lambda: order.append(2))]) == [None, None]
    assert order == [1, 2]
