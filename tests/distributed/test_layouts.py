"""Issue 2, tests 3-4: the core promise. The same seed and data give the same training under every
layout: `lm loss` and `grad-norm` per step over 10 steps equal the single-process run for TP2,
PP2, PP4, DP2, TP2xPP2 and TP4 (fp32, dropout 0); and two identical runs are bitwise identical.

Tolerance 1e-5 relative (support/metrics.py says why).
"""

import pytest

from support.metrics import assert_same_training
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags, train_and_read

ITERS = ["--train-iters", "10"]
LAYOUTS = {  # name: (processes, tp, pp)
    "TP2": (2, 2, 1),
    "PP2": (2, 1, 2),
    "PP4": (4, 1, 4),
    "DP2": (2, 1, 1),
    "TP2xPP2": (4, 2, 2),
    "TP4": (4, 4, 1),
}


TP2_PP2_DROPOUT = TINY_MODEL + ["--train-iters", "4"] + layout_flags(2, 2)
SHARED_RUNS = {  # support/shared_runs.py: the session's runs of one process count in one launch
    **{name: (nproc, TINY_MODEL + NO_DROPOUT + ITERS + layout_flags(tp, pp)) for name, (nproc, tp, pp) in LAYOUTS.items()},
    "TP2xPP2 with dropout": (4, TP2_PP2_DROPOUT),
    # The single-process run again, after a run with other flags in its batch (the test below).
    "other first": (1, TINY_MODEL + ITERS + ["--seed", "7"]),
    "again": (1, TINY_MODEL + NO_DROPOUT + ITERS),
}


@pytest.fixture(scope="module")
def layout_runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_equals_single_process(name, layout_runs, tiny_single_process):
    steps = layout_runs[name]
    assert [s["iteration"] for s in steps] == list(range(1, 11))
    assert_same_training(steps, tiny_single_process, name)


def test_identical_runs_are_bitwise_identical_and_a_batch_leaks_nothing(layout_runs, tiny_single_process):
    """The single-process run again, in another process, in the session's one-process batch after a
    run with other flags (dropout, another seed): bitwise the session's own launch of it. So runs
    repeat across processes, and a batched run (the layout checks above) is the run it would be alone."""
    assert [(s["lm_loss"], s["grad_norm"]) for s in layout_runs["again"]] == \
        [(s["lm_loss"], s["grad_norm"]) for s in tiny_single_process]
    assert layout_runs["other first"][0]["lm_loss"] != layout_runs["again"][0]["lm_loss"]


def test_identical_tp2_pp2_runs_with_dropout_are_bitwise_identical(layout_runs, tmp_path):
    """A launch of its own against the same run in the shared 4-process batch (after PP4, TP2 x PP2
    and TP4 without dropout): bitwise across processes, and after other runs in one."""
    first = train_and_read(tmp_path, "a", 4, TP2_PP2_DROPOUT)
    second = layout_runs["TP2xPP2 with dropout"]
    assert [(s["lm_loss"], s["grad_norm"], s["num_zeros"]) for s in first] == \
           [(s["lm_loss"], s["grad_norm"], s["num_zeros"]) for s in second]
