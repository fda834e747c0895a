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

from checkpoint.ckpt_runs import after, layout_run, relative, rewind
from support.torchrun import NO_DROPOUT

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
DISTOPT = ["--use-distributed-optimizer"]
RTOL = 1e-5  # the layout tolerance of tests/distributed/test_layouts.py, for the same reason


def _flags(save, *extra):
    return ["--train-iters", str(N), "--save", str(save), "--save-interval", str(HALF), "--load", str(save), *extra]


@pytest.mark.parametrize("layout,extra", [("DP2", ["--async-save"]), ("DP2", []), ("PP2xDP2", ["--async-save"])])
def test_distributed_optimizer_resume_is_bitwise_exact(layout, extra, tmp_path):
    save = tmp_path / "ckpt"
    first, _ = layout_run(tmp_path, "first", layout, _flags(save, *DISTOPT, *extra))
    rewind(save, HALF)
    second, log = layout_run(tmp_path, "second", layout, _flags(save, *DISTOPT, *extra))
    assert "successfully loaded checkpoint" in log and "optimizer" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        for key in COMPARED:
            assert ours[key] == ref[key], (layout, ours["iteration"], key, ours[key], ref[key])


def test_distributed_checkpoint_loads_into_one_process_without_the_flag(tmp_path):
    save = tmp_path / "ckpt"
    first, _ = layout_run(tmp_path, "dp2", "DP2", _flags(save, *DISTOPT, *NO_DROPOUT))
    rewind(save, HALF)
    second, log = layout_run(tmp_path, "single", "TP1PP1", _flags(save, *NO_DROPOUT))
    assert "successfully loaded checkpoint" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (ours["iteration"], key, ours[key], ref[key])


def test_plain_checkpoint_loads_with_the_flag(tmp_path):
    save = tmp_path / "ckpt"
    first, _ = layout_run(tmp_path, "plain", "DP2", _flags(save))
    rewind(save, HALF)
    second, log = layout_run(tmp_path, "distopt", "DP2", _flags(save, *DISTOPT))
    assert "successfully loaded checkpoint" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        assert ours["lm_loss"] == ref["lm_loss"], (ours["iteration"], ours["lm_loss"], ref["lm_loss"])
        for key in ("grad_norm", "params_norm"):  # float64 sums in another order: see the module
            assert relative(ours[key], ref[key]) <= 1e-12, (ours["iteration"], key, ours[key], ref[key])
