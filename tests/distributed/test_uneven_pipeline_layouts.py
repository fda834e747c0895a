"""The core promise under Megatron's uneven pipeline split: an 8-layer model trained 10 steps with
the layers cut unevenly over the stages equals the single-process run (1e-5, support/metrics.py),
as the even layouts do in test_layouts.py. A wrong layer range (a layer built twice, skipped, or
built with another layer's weights) changes the loss at the first step.

The zero-layer case: --account-for-embedding-in-pipeline-split with PP = layers + 1 leaves the
first stage the embedding alone (Megatron allows it), checked on a 1-layer model at PP2.
"""

import pytest
from support.metrics import assert_same_training
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags

ITERS = ["--train-iters", "10"]
EIGHT_LAYERS = ["--num-layers", "8"]
FIRST, LAST = "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers"
LAYOUTS = {  # name: (processes, tp, pp, split flags); the layers per stage in the name
    "PP4 first 1 last 1 (1,3,3,1)": (4, 1, 4, [FIRST, "1", LAST, "1"]),
    "TP2xPP2 first 3 (3,5)": (4, 2, 2, [FIRST, "3"]),
    "PP3 account embedding (2,3,3)": (3, 1, 3, ["--account-for-embedding-in-pipeline-split"]),
    "PP3 account loss (3,3,2)": (3, 1, 3, ["--account-for-loss-in-pipeline-split"]),
}


EIGHT = TINY_MODEL + EIGHT_LAYERS + NO_DROPOUT + ITERS
ONE_LAYER = TINY_MODEL + ["--num-layers", "1"] + NO_DROPOUT + ["--train-iters", "5"]


SHARED_RUNS = {  # both single-process references and every layout (support/shared_runs.py)
    "single": (1, EIGHT), "single one layer": (1, ONE_LAYER),
    **{name: (nproc, EIGHT + layout_flags(tp, pp) + split) for name, (nproc, tp, pp, split) in LAYOUTS.items()},
    "PP2 account embedding (0,1)": (2, ONE_LAYER + layout_flags(1, 2) + ["--account-for-embedding-in-pipeline-split"]),
}


@pytest.fixture(scope="module")
def runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_uneven_layout_equals_single_process(name, runs):
    steps = runs[name]
    assert len(steps) == 10
    assert_same_training(steps, runs["single"], name)


def test_first_stage_with_the_embedding_alone_equals_single_process(runs):
    name = "PP2 account embedding (0,1)"
    steps = runs[name]
    assert len(steps) == 5
    assert_same_training(steps, runs["single one layer"], name)
