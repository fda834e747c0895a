"""--use-distributed-optimizer checkpoints: each DP rank writes only its owned flat range of the
Adam state, in the ordinary per-parameter global format (checkpoint/flat_range.py), so

- a distributed-optimizer run resumes bitwise (also with --async-save, also with PP and a tied
  embedding in a bucket of its own);
- its checkpoint loads into one process without the flag and continues within the layout
  tolerance of the uninterrupted run (dropout 0: a layout change does not restore RNG streams);
- a checkpoint written without the flag loads with it (bitwise: the distributed optimizer computes
  the same numbers as the plain one at DP2, see training/distributed_optimizer.py).
A wrong or missing piece of Adam state changes the update at the first step after the load.
"""

import pytest

from checkpoint.ckpt_runs import after, assert_resumed_bitwise, relative, tiny_under
from checkpoint.shared_saves import saved
from support.torchrun import NO_DROPOUT

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
DISTOPT = ["--use-distributed-optimizer"]
RTOL = 1e-5  # the layout tolerance of tests/distributed/test_layouts.py, for the same reason
BITWISE = {"DP2 async": ("DP2", ["--async-save"]), "DP2": ("DP2", []), "PP2xDP2 async": ("PP2xDP2", ["--async-save"])}


def _flags(save: str, *extra: str) -> list[str]:
    return ["--train-iters", str(N), "--save", save, "--save-interval", str(HALF), "--load", save, *extra]


# checkpoint/shared_saves.py: every first run in the session's saving launches, the second after the rewind.
SHARED_SAVES = {
    **{name: (tiny_under(layout, _flags(saved(name), *DISTOPT, *extra)), HALF) for name, (layout, extra) in BITWISE.items()},
    "distopt DP2": (tiny_under("DP2", _flags(saved("distopt DP2"), *DISTOPT, *NO_DROPOUT)), HALF),
    "plain DP2": (tiny_under("DP2", _flags(saved("plain DP2"))), HALF),
}
SHARED_LOADS = {
    **{name: tiny_under(layout, _flags(saved(name), *DISTOPT, *extra)) for name, (layout, extra) in BITWISE.items()},
    "distopt DP2 -> one process": tiny_under("TP1PP1", _flags(saved("distopt DP2"), *NO_DROPOUT)),
    "plain DP2 -> distopt": tiny_under("DP2", _flags(saved("plain DP2"), *DISTOPT)),
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.mark.parametrize("name", list(BITWISE))
def test_distributed_optimizer_resume_is_bitwise_exact(name, runs):
    saves, loads = runs
    first, (second, log) = saves[name].steps, loads[name]
    assert "successfully loaded checkpoint" in log and "optimizer" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    assert_resumed_bitwise(second, first, HALF, COMPARED, name)


def test_distributed_checkpoint_loads_into_one_process_without_the_flag(runs):
    saves, loads = runs
    first, (second, log) = saves["distopt DP2"].steps, loads["distopt DP2 -> one process"]
    assert "successfully loaded checkpoint" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (ours["iteration"], key, ours[key], ref[key])


def test_plain_checkpoint_loads_with_the_flag(runs):
    saves, loads = runs
    first, (second, log) = saves["plain DP2"].steps, loads["plain DP2 -> distopt"]
    assert "successfully loaded checkpoint" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        assert ours["lm_loss"] == ref["lm_loss"], (ours["iteration"], ours["lm_loss"], ref["lm_loss"])
        for key in ("grad_norm", "params_norm"):  # float64 sums in another order: see the module
            assert relative(ours[key], ref[key]) <= 1e-12, (ours["iteration"], key, ours[key], ref[key])
