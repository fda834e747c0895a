"""Issue 4, tests 1 and 2 on PP2 (2 ranks), with untied and --bf16 pairs: see equality_checks.py."""

import pytest

from deferral.equality_checks import BF16, UNTIED, DeferralEqualityChecks, deferred, launch_layout, limit_runs

RUNS = {**limit_runs(), "untied_plain": UNTIED, "untied_L2": [*UNTIED, *deferred(2)],
        "bf16_plain": BF16, "bf16_L2": [*BF16, *deferred(2)]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch_layout(tmp_path_factory.mktemp("pp2"), nproc=2, tp=1, runs=RUNS)


class TestPP2(DeferralEqualityChecks):
    """Runs the shared checks on this file's launch."""
