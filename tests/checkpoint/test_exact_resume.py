"""Issue 3, "What must be shown" 1 and 5: exact resume, also with --async-save.

Run 1 trains N steps with dropout on, saving at N/2 (and, as Megatron, at the end); the end
checkpoint is removed and the tracker set back to N/2; run 2 loads N/2 and trains to N. Every
value after N/2 must be *bitwise* the value of run 1: the model, Adam state, LR schedule, data
position and every random stream (dropout is on, so a wrong RNG shows at once) come back exactly.
"""

import pytest

from checkpoint.ckpt_runs import after, layout_run, rewind

N, HALF = 6, 3
COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
CASES = {  # layout: extra flags for both runs
    "TP2xPP2": ["--async-save"],
    "DP2": ["--async-save"],
    "TP1PP1": [],
}


@pytest.mark.parametrize("layout", list(CASES))
def test_resume_is_bitwise_exact(layout, tmp_path):
    save = tmp_path / "ckpt"
    flags = ["--train-iters", str(N), "--save", str(save), "--save-interval", str(HALF), "--load", str(save),
             *CASES[layout]]
    first, log = layout_run(tmp_path, "first", layout, flags)
    assert "starting from scratch" in log  # --load names the still-empty save folder
    assert (save / f"iter_{N:07d}" / "metadata.json").exists(), "no end-of-training save"
    assert not list(save.glob("*.in_progress")), "an unfinished checkpoint folder was left behind"
    rewind(save, HALF)

    second, _ = layout_run(tmp_path, "second", layout, flags)
    assert [s["iteration"] for s in second] == list(range(HALF + 1, N + 1))
    for ours, ref in zip(second, after(first, HALF)):
        for key in COMPARED:
            assert ours[key] == ref[key], (layout, ours["iteration"], key, ours[key], ref[key])
