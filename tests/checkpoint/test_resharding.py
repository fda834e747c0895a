"""Issue 3, "What must be shown" 2: a checkpoint saved under TP2 x PP2 loads under TP1PP1, PP4,
TP4, TP2PP1 and DP2, and one saved under TP1PP1 loads under TP2 x PP2; model and Adam state
reshard, and training continues as the same-layout resume does.

Dropout is off: random streams belong to a rank of a layout and are not carried across layouts
(the run says so in a log line, checked here), and with dropout off nothing else is random.
The same-layout reference is run 1's own steps after the save: the exact-resume tests show a
same-layout resume reproduces them bit for bit.
"""

import pytest
import torch

from checkpoint.ckpt_runs import after, layout_run, relative, tiny_under
from checkpoint.shared_saves import saved, saving_run
from goldtron.checkpoint.commands import main as ckpt_main
from support.torchrun import NO_DROPOUT

N, HALF = 4, 2
# Each layout sums fp32 products in its own order (sharded GEMMs, all-reduces, DP averaging), so
# values differ at ~1e-7 per step and compound over the Adam steps after the load; a wrong shard
# or offset shows at 1e-2 or more at the first step (as tests/distributed/test_layouts.py).
RTOL = 1e-5
TARGETS = ["TP1PP1", "PP4", "TP4", "TP2PP1", "DP2"]


# checkpoint/shared_saves.py: the saving run in the session's first launches, the loads after.
SHARED_SAVES = {"tp2pp2": saving_run("TP2xPP2", NO_DROPOUT, N, HALF, "tp2pp2")}  # trained to N, rewound to N/2
SHARED_LOADS = {  # every target layout loads the TP2 x PP2 checkpoint and trains to N (no save: it only reads)
    layout: tiny_under(layout, NO_DROPOUT + ["--train-iters", str(N), "--load", saved("tp2pp2")]) for layout in TARGETS}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.fixture(scope="module")
def tp2pp2(runs):
    """The TP2 x PP2 save, rewound to N/2: (save dir, run 1's metrics)."""
    saving = runs[0]["tp2pp2"]
    return saving.folder, saving.steps


@pytest.fixture(scope="module")
def continued(runs):
    return runs[1]


@pytest.mark.parametrize("layout", TARGETS)
def test_tp2pp2_checkpoint_continues_under(layout, tp2pp2, continued):
    _, reference = tp2pp2
    steps, log = continued[layout]
    assert "RNG state not restored" in log and "TP2 x PP2 x DP1" in log
    assert [s["iteration"] for s in steps] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(steps, after(reference, HALF)):
        for key in ("lm_loss", "grad_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (layout, ours["iteration"], key, ours[key], ref[key])
        assert ours["learning_rate"] == ref["learning_rate"]


@pytest.fixture(scope="module")
def resaved_by_tp1(tp2pp2, tmp_path_factory):
    """The TP2 x PP2 checkpoint loaded by a TP1PP1 run that trains nothing and saves at the end."""
    save, _ = tp2pp2
    tmp = tmp_path_factory.mktemp("resaved")
    # --lr-decay-iters keeps the schedule the checkpoint's (it defaults to --train-iters).
    layout_run(tmp, "resave", "TP1PP1", NO_DROPOUT + ["--train-iters", str(HALF), "--lr-decay-iters", str(N),
                                                       "--load", str(save), "--save", str(tmp / "ckpt")])
    return tmp / "ckpt"


def test_reshard_round_trip_is_bitwise(tp2pp2, resaved_by_tp1, tmp_path, capsys):
    """TP2 x PP2 -> TP1PP1 -> saved again: every model and Adam tensor is bitwise the same
    (both read back whole through `goldtron ckpt export --to torch`)."""
    assert ckpt_main(["export", str(tp2pp2[0]), "--to", "torch", str(tmp_path / "original.pt")]) == 0
    assert ckpt_main(["export", str(resaved_by_tp1), "--to", "torch", str(tmp_path / "resaved.pt")]) == 0
    original, resaved = torch.load(tmp_path / "original.pt"), torch.load(tmp_path / "resaved.pt")
    assert original["model"]["embedding.word_embeddings.weight"].shape == (1001, 64)  # real rows, no padding
    assert resaved["layout"]["world_size"] == 1 and original["layout"]["world_size"] == 4
    assert resaved["iteration"] == original["iteration"] == HALF
    assert sorted(resaved["model"]) == sorted(original["model"])
    for name, tensor in original["model"].items():
        assert resaved["model"][name].equal(tensor), name
    for kind, tensors in original["optimizer"].items():
        assert sorted(resaved["optimizer"][kind]) == sorted(tensors)
        for name, tensor in tensors.items():
            assert resaved["optimizer"][kind][name].equal(tensor), (kind, name)
    assert ckpt_main(["inspect", str(resaved_by_tp1)]) == 0
    assert "TP1 x PP1 x DP1" in capsys.readouterr().out


def test_tp1_checkpoint_continues_under_tp2pp2(tp2pp2, resaved_by_tp1, tmp_path):
    """The reverse direction. The TP1-saved state is bitwise the TP2 x PP2 one (test above), and
    without dropout nothing else differs, so TP2 x PP2 continues bit for bit as its own resume."""
    _, reference = tp2pp2
    steps, log = layout_run(tmp_path, "reverse", "TP2xPP2", NO_DROPOUT + ["--train-iters", str(N),
                                                                          "--load", str(resaved_by_tp1)])
    assert "RNG state not restored" in log
    for ours, ref in zip(steps, after(reference, HALF), strict=True):
        assert (ours["lm_loss"], ours["grad_norm"]) == (ref["lm_loss"], ref["grad_norm"]), ours["iteration"]
