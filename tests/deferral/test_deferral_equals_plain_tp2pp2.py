"""Issue 4, tests 1 and 2 on TP2xPP2 (4 ranks): see equality_checks.py."""

import pytest

from deferral.equality_checks import DeferralEqualityChecks, launch_layout, limit_runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch_layout(tmp_path_factory.mktemp("tp2pp2"), nproc=4, tp=2, runs=limit_runs())


class TestTP2xPP2(DeferralEqualityChecks):
    """Runs the shared checks on this file's launch."""
