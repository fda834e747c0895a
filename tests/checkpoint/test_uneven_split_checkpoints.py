"""Checkpoints of an uneven pipeline split (8 layers, PP4, first 1 / last 1: stages of 1,3,3,1
layers). Layers keep their global index whatever the split, so the checkpoint loads under the
even PP2 split and in one process and training continues as the same-layout resume does (1e-5,
as tests/checkpoint/test_resharding.py); and the uneven run resumes bit for bit under its own
layout, dropout on. The even PP4 split (2,2,2,2) loads it too: same TP/PP/DP, other stages.
"""

import pytest

from checkpoint.ckpt_runs import after, layout_run, layout_runs, relative, rewind, train_save_rewind
from goldtron.checkpoint.commands import main as ckpt_main
from support.torchrun import NO_DROPOUT

EIGHT_LAYERS = ["--num-layers", "8"]
UNEVEN = EIGHT_LAYERS + ["--decoder-first-pipeline-num-layers", "1", "--decoder-last-pipeline-num-layers", "1"]
RTOL = 1e-5


@pytest.fixture(scope="module")
def uneven_pp4(tmp_path_factory):
    """Uneven PP4 trained to 4, saving at 2, rewound to 2: (save dir, run 1's metrics)."""
    return train_save_rewind(tmp_path_factory.mktemp("uneven"), "PP4", UNEVEN + NO_DROPOUT, 4, 2)


EVEN_TARGETS = ["PP2", "TP1PP1", "PP4"]


@pytest.fixture(scope="module")
def continued(uneven_pp4, tmp_path_factory):
    """Every even layout loads the uneven checkpoint and trains to 4 (no save: it only reads)."""
    save, _ = uneven_pp4
    return layout_runs(tmp_path_factory.mktemp("even"), {
        layout: (layout, EIGHT_LAYERS + NO_DROPOUT + ["--train-iters", "4", "--load", str(save)]) for layout in EVEN_TARGETS})


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


def test_uneven_resume_is_bitwise_exact(tmp_path):
    """Dropout on (TINY_MODEL's default 0.1): model, Adam state and every random stream come back."""
    save = tmp_path / "ckpt"
    flags = UNEVEN + ["--train-iters", "4", "--save", str(save), "--save-interval", "2", "--load", str(save)]
    first, _ = layout_run(tmp_path, "first", "PP4", flags)
    rewind(save, 2)
    second, log = layout_run(tmp_path, "second", "PP4", flags)
    assert "RNG state not restored" not in log
    assert [s["iteration"] for s in second] == [3, 4]
    for ours, ref in zip(second, after(first, 2), strict=True):
        for key in ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate"):
            assert ours[key] == ref[key], (ours["iteration"], key, ours[key], ref[key])
