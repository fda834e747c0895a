"""Checkpoints of an uneven pipeline split (8 layers, PP4, first 1 / last 1: stages of 1,3,3,1
layers). Layers keep their global index whatever the split, so the checkpoint loads under the
even PP2 split and in one process and training continues as the same-layout resume does (1e-5,
as tests/checkpoint/test_resharding.py); and the uneven run resumes bit for bit under its own
layout, dropout on. The even PP4 split (2,2,2,2) loads it too: same TP/PP/DP, other stages.
"""

import pytest

from checkpoint.ckpt_runs import after, assert_resumed_bitwise, relative, tiny_under
from checkpoint.shared_saves import resume_run, saved, saving_run
from goldtron.checkpoint.commands import main as ckpt_main
from support.torchrun import NO_DROPOUT

EIGHT_LAYERS = ["--num-layers", "8"]
UNEVEN = EIGHT_LAYERS + ["--decoder-first-pipeline-num-layers", "1", "--decoder-last-pipeline-num-layers", "1"]
RTOL = 1e-5


EVEN_TARGETS = ["PP2", "TP1PP1", "PP4"]
# Dropout on (TINY_MODEL's default 0.1): model, Adam state and every random stream come back.
RESUMED = resume_run("PP4", UNEVEN, 4, 2, "uneven dropout")
# checkpoint/shared_saves.py: the saving runs in the session's first launches, the loads after.
SHARED_SAVES = {
    "uneven": saving_run("PP4", UNEVEN + NO_DROPOUT, 4, 2, "uneven"),  # trained to 4, rewound to 2
    "uneven dropout": (RESUMED, 2),
}
SHARED_LOADS = {  # every even layout loads the uneven checkpoint and trains to 4 (no save: it only reads)
    **{layout: tiny_under(layout, EIGHT_LAYERS + NO_DROPOUT + ["--train-iters", "4", "--load", saved("uneven")])
       for layout in EVEN_TARGETS},
    "uneven dropout": RESUMED,
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.fixture(scope="module")
def uneven_pp4(runs):
    """The uneven PP4 save, rewound to 2: (save dir, run 1's metrics)."""
    saving = runs[0]["uneven"]
    return saving.folder, saving.steps


@pytest.fixture(scope="module")
def continued(runs):
    return runs[1]


@pytest.mark.parametrize("layout", EVEN_TARGETS)
def test_uneven_checkpoint_continues_under_an_even_layout(layout, uneven_pp4, continued):
    """PP4 even (2,2,2,2): same TP, PP and DP but other layers per stage, so each rank's random
    streams drew for other layers and are not restored either."""
    _, reference = uneven_pp4
    steps, log = continued[layout]
    assert "RNG state not restored" in log and "TP1 x PP4 x DP1 (layers per stage 1,3,3,1)" in log
    assert [s["iteration"] for s in steps] == [3, 4]
    for ours, ref in zip(steps, after(reference, 2), strict=True):
        for key in ("lm_loss", "grad_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (layout, ours["iteration"], key, ours[key], ref[key])
        assert ours["learning_rate"] == ref["learning_rate"]


def test_inspect_shows_the_split(uneven_pp4, capsys):
    assert ckpt_main(["inspect", str(uneven_pp4[0])]) == 0
    assert "TP1 x PP4 x DP1 (layers per stage 1,3,3,1)" in capsys.readouterr().out


def test_uneven_resume_is_bitwise_exact(runs):
    """Dropout on (TINY_MODEL's default 0.1): model, Adam state and every random stream come back."""
    first, (second, log) = runs[0]["uneven dropout"].steps, runs[1]["uneven dropout"]
    assert "RNG state not restored" not in log
    assert [s["iteration"] for s in second] == [3, 4]
    assert_resumed_bitwise(second, first, 2, ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate"))
