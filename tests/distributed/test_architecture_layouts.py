"""The core promise for the architecture options: with --position-embedding-type rope --swiglu
--disable-bias-linear (dropout 0), `lm loss`, `grad-norm` and `params-norm` of TP2, PP2 and
TP2xPP2 over 10 steps equal the single-process run within 1e-5 relative, for the reason
test_layouts.py gives (the same sums in other orders; a wrong shard is 1e-2 or more). TP2 with
--sequence-parallel too: without a position table its embedding reduce-scatters, and SwiGLU's
[gate; up] fc1 takes the all-gathered sequence (docs/sequence_parallel.md)."""

import pytest

from checkpoint.ckpt_runs import relative
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags

ARCHITECTURE = ["--position-embedding-type", "rope", "--swiglu", "--disable-bias-linear"]
FLAGS = TINY_MODEL + NO_DROPOUT + ARCHITECTURE + ["--train-iters", "10"]
LAYOUTS = {"TP2": (2, 2, 1), "PP2": (2, 1, 2), "TP2xPP2": (4, 2, 2), "TP2+SP": (2, 2, 1)}  # name: (processes, tp, pp)
EXTRA = {"TP2+SP": ["--sequence-parallel"]}
RTOL = 1e-5
SHARED_RUNS = {  # the single-process run and every layout (support/shared_runs.py)
    "single": (1, FLAGS),
    **{name: (nproc, FLAGS + layout_flags(tp, pp) + EXTRA.get(name, [])) for name, (nproc, tp, pp) in LAYOUTS.items()}}


@pytest.fixture(scope="module")
def runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_architecture_layout_equals_single_process(name, runs):
    steps, single_process = runs[name], runs["single"]
    assert [s["iteration"] for s in steps] == list(range(1, 11))
    for ours, ref in zip(steps, single_process):
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (name, ours["iteration"], key, ours[key], ref[key])
        assert abs(ours["num_zeros"] - ref["num_zeros"]) <= 5, (name, ours["iteration"])
