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

from checkpoint.ckpt_runs import after, assert_continues_within, tiny_under
from checkpoint.shared_saves import saved
from support.torchrun import NO_DROPOUT

N, HALF = 4, 2
VP2 = ["--num-virtual-stages-per-pipeline-rank", "2"]
RTOL = 1e-5  # see the module docstring


def _saving(save: str, flags: list[str]) -> list[str]:
    return flags + ["--train-iters", str(N), "--save", save, "--save-interval", str(HALF), "--load", save]


LOAD_ONLY = ["--train-iters", str(N)]
# checkpoint/shared_saves.py: the saving runs in the session's first launches, the loads after the rewind.
SHARED_SAVES = {
    "vp": (tiny_under("PP2", _saving(saved("vp"), NO_DROPOUT + VP2)), HALF),
    "plain": (tiny_under("PP2", _saving(saved("plain"), NO_DROPOUT)), HALF),
    "vp dropout": (tiny_under("PP2", _saving(saved("vp dropout"), VP2)), HALF),
}
SHARED_LOADS = {
    "vp resumed": tiny_under("PP2", _saving(saved("vp dropout"), VP2)),
    "vp -> PP2": tiny_under("PP2", NO_DROPOUT + LOAD_ONLY + ["--load", saved("vp")]),
    "PP2 -> vp": tiny_under("PP2", NO_DROPOUT + VP2 + LOAD_ONLY + ["--load", saved("plain")]),
    "vp -> one process": tiny_under("TP1PP1", NO_DROPOUT + LOAD_ONLY + ["--load", saved("vp")]),
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    """({save name: (run 1's metrics, log)}, {load name: (metrics, log)})"""
    saves, loads = shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)
    return {name: (saving.steps, saving.log) for name, saving in saves.items()}, loads


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
