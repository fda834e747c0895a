"""Fixtures shared by the layout-equality tests of this folder."""

import pytest

from support.shared_runs import SharedRuns
from support.torchrun import NO_DROPOUT, TINY_MODEL, train_and_read

TEN_STEPS = ["--train-iters", "10"]


@pytest.fixture(scope="session")
def tiny_single_process(tmp_path_factory) -> list[dict]:
    """The tiny model without dropout, 10 steps in one process: the run every layout must equal.
    Session-scoped: several test files compare against the same run. A launch of its own, so
    that what the shared batches give is compared with a run no batch made."""
    return train_and_read(tmp_path_factory.mktemp("single"), "run", 1, TINY_MODEL + NO_DROPOUT + TEN_STEPS)


@pytest.fixture(scope="session")
def shared_runs(request, tmp_path_factory) -> SharedRuns:
    """The SHARED_RUNS of every collected test module, those of one process count in one launch
    (support/shared_runs.py)."""
    modules = dict.fromkeys(item.module for item in request.session.items
                            if hasattr(getattr(item, "module", None), "SHARED_RUNS"))
    return SharedRuns(tmp_path_factory.mktemp("shared_runs"),
                      [(module.__name__, module.SHARED_RUNS) for module in modules])
