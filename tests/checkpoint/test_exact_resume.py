"""Issue 3, "What must be shown" 1 and 5: exact resume, also with --async-save.

Run 1 trains N steps with dropout on, saving at N/2 (and, as Megatron, at the end); the end
checkpoint is removed and the tracker set back to N/2; run 2 loads N/2 and trains to N. Every
value after N/2 must be *bitwise* the value of run 1: the model, Adam state, LR schedule, data
position and every random stream (dropout is on, so a wrong RNG shows at once) come back exactly.
"""

import pytest

from checkpoint.ckpt_runs import assert_resumed_bitwise, tiny_under
from checkpoint.shared_saves import saved

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
CASES = {  # layout: extra flags for both runs
    "TP2xPP2": ["--async-save"],
    "DP2": ["--async-save"],
    "TP1PP1": [],
}


def _flags(layout: str) -> list[str]:
    """Both runs' flags: --load names the save folder, still empty for run 1."""
    return ["--train-iters", str(N), "--save", saved(layout), "--save-interval", str(HALF), "--load", saved(layout),
            *CASES[layout]]


# checkpoint/shared_saves.py: run 1 of every case in the session's saving launches, run 2 after the rewind.
SHARED_SAVES = {layout: (tiny_under(layout, _flags(layout)), HALF) for layout in CASES}
SHARED_LOADS = {layout: tiny_under(layout, _flags(layout)) for layout in CASES}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.mark.parametrize("layout", list(CASES))
def test_resume_is_bitwise_exact(layout, runs):
    saves, loads = runs
    first = saves[layout]
    assert "starting from scratch" in first.log  # --load names the still-empty save folder
    assert f"iter_{N:07d}/metadata.json" in first.files_before_rewind, "no end-of-training save"
    assert not [f for f in first.files_before_rewind if f.endswith(".in_progress")], \
        "an unfinished checkpoint folder was left behind"

    second, _ = loads[layout]
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    assert_resumed_bitwise(second, first.steps, HALF, COMPARED, layout)
