"""Resume with --overlap-grad-reduce (and --overlap-param-gather) is bitwise exact, dropout on.

The save after a step with --overlap-param-gather must first finish the parameter all-gathers
that would otherwise run in the next forward (the checkpoint holds whole weights); a save of
stale weights, or a reduction that left something out, changes the steps after the resume.
"""

import pytest

from checkpoint.ckpt_runs import assert_resumed_bitwise, tiny_under
from checkpoint.shared_saves import saved

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
OVERLAP = ["--overlap-grad-reduce", "--ddp-bucket-size", "20000"]
CASES = {  # name: (layout, extra flags of both runs)
    "DP2": ("DP2", OVERLAP),
    "PP2xDP2 distopt gather async": ("PP2xDP2", OVERLAP + ["--use-distributed-optimizer", "--overlap-param-gather", "--async-save"]),
}


def _run(name: str) -> tuple[int, list[str]]:
    layout, extra = CASES[name]
    return tiny_under(layout, ["--train-iters", str(N), "--save", saved(name), "--save-interval", str(HALF),
                               "--load", saved(name), *extra])


# checkpoint/shared_saves.py: run 1 of every case in the session's saving launches, run 2 after the rewind.
SHARED_SAVES = {name: (_run(name), HALF) for name in CASES}
SHARED_LOADS = {name: _run(name) for name in CASES}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.mark.parametrize("name", list(CASES))
def test_resume_with_overlap_is_bitwise_exact(name, runs):
    saves, loads = runs
    first, (second, log) = saves[name].steps, loads[name]
    assert "successfully loaded checkpoint" in log and "optimizer" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    assert_resumed_bitwise(second, first, HALF, COMPARED, name)
