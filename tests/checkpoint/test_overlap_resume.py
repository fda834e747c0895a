"""Resume with --overlap-grad-reduce (and --overlap-param-gather) is bitwise exact, dropout on.

The save after a step with --overlap-param-gather must first finish the parameter all-gathers
that would otherwise run in the next forward (the checkpoint holds whole weights); a save of
stale weights, or a reduction that left something out, changes the steps after the resume.
"""

import pytest

from checkpoint.ckpt_runs import after, layout_run, rewind

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
OVERLAP = ["--overlap-grad-reduce", "--ddp-bucket-size", "20000"]


@pytest.mark.parametrize("layout,extra", [
    ("DP2", OVERLAP),
    ("PP2xDP2", OVERLAP + ["--use-distributed-optimizer", "--overlap-param-gather", "--async-save"]),
])
def test_resume_with_overlap_is_bitwise_exact(layout, extra, tmp_path):
    save = tmp_path / "ckpt"
    flags = ["--train-iters", str(N), "--save", str(save), "--save-interval", str(HALF), "--load", str(save), *extra]
    first, _ = layout_run(tmp_path, "first", layout, flags)
    rewind(save, HALF)
    second, log = layout_run(tmp_path, "second", layout, flags)
    assert "successfully loaded checkpoint" in log and "optimizer" in log
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        for key in COMPARED:
            assert ours[key] == ref[key], (layout, ours["iteration"], key, ours[key], ref[key])
