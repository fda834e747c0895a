"""Checkpoints under Megatron's interleaved (virtual) pipeline.

- Exact resume: PP2 x VP2 with dropout on, saved half-way and resumed, gives the uninterrupted
  run's bits (model, Adam, LR schedule and every rank's random streams come back).
- Resharding: layers keep their global names whatever the chunks (decoder.layers.i), so a
  PP2 x VP2 checkpoint loads under PP2 without chunks and in one process, and a PP2 checkpoint
  loads under PP2 x VP2; training continues as the saving run did (1e-5: each layout sums fp32
  products in its own order, as tests/checkpoint/test_resharding.py says). Rank 0 of PP2 holds
  layers 0,1 without chunks and 0,2 with two, so the random streams are not carried over (the
  log says so); dropout is off in these runs, so nothing else is random.
"""

import pytest

from checkpoint.ckpt_runs import after, assert_continues_within, layout_runs, rewind
from support.torchrun import NO_DROPOUT

N, HALF = 4, 2
VP2 = ["--num-virtual-stages-per-pipeline-rank", "2"]
RTOL = 1e-5  # see the module docstring


def _saving(save, flags: list[str]) -> list[str]:
    return flags + ["--train-iters", str(N), "--save", str(save), "--save-interval", str(HALF), "--load", str(save)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch per process count and phase: the saving runs, then (after the rewind) the loads."""
    tmp = tmp_path_factory.mktemp("vp_ckpt")
    saves = {name: tmp / name for name in ("vp", "plain", "vp dropout")}
    first = layout_runs(tmp / "first", {
        "vp": ("PP2", _saving(saves["vp"], NO_DROPOUT + VP2)),
        "plain": ("PP2", _saving(saves["plain"], NO_DROPOUT)),
        "vp dropout": ("PP2", _saving(saves["vp dropout"], VP2)),
    })
    for save in saves.values():
        rewind(save, HALF)
    load_only = ["--train-iters", str(N)]
    second = layout_runs(tmp / "second", {
        "vp resumed": ("PP2", _saving(saves["vp dropout"], VP2)),
        "vp -> PP2": ("PP2", NO_DROPOUT + load_only + ["--load", str(saves["vp"])]),
        "PP2 -> vp": ("PP2", NO_DROPOUT + VP2 + load_only + ["--load", str(saves["plain"])]),
        "vp -> one process": ("TP1PP1", NO_DROPOUT + load_only + ["--load", str(saves["vp"])]),
    })
    return first, second


def test_virtual_pipeline_resume_is_bitwise(runs):
    first, second = runs
    straight, (resumed, log) = first["vp dropout"][0], second["vp resumed"]
    assert "RNG state not restored" not in log
    assert [s["iteration"] for s in resumed] == list(range(HALF + 1, N + 1))
    key = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")
    assert [tuple(s[k] for k in key) for s in resumed] == [tuple(s[k] for k in key) for s in after(straight, HALF)]


@pytest.mark.parametrize("name,saved_by", [("vp -> PP2", "vp"), ("vp -> one process", "vp"), ("PP2 -> vp", "plain")])
def test_checkpoint_reshards_between_virtual_and_plain_pipelines(runs, name, saved_by):
    first, second = runs
    steps, log = second[name]
    assert "RNG state not restored" in log and "TP1 x PP2 x DP1" in log
    if saved_by == "vp":
        assert "x VP2 (layers per virtual stage 1,1,1,1)" in log  # the saved layout, as the log names it
    assert_continues_within(steps, first[saved_by][0], HALF, RTOL)
