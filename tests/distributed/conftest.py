"""Fixtures shared by the layout-equality tests of this folder."""

import pytest

from support.torchrun import NO_DROPOUT, TINY_MODEL, train_and_read

TEN_STEPS = ["--train-iters", "10"]


@pytest.fixture(scope="session")
def tiny_single_process(tmp_path_factory) -> list[dict]:
    """The tiny model without dropout, 10 steps in one process: the run every layout must equal.
    Session-scoped: several test files compare against the same run. A launch of its own, so
    that what the shared batches give is compared with a run no batch made."""
    return train_and_read(tmp_path_factory.mktemp("single"), "run", 1, TINY_MODEL + NO_DROPOUT + TEN_STEPS)

