"""--use-distributed-optimizer (ZeRO-1) computes what the plain optimizer computes.

Under DP2, TP2xDP2 and PP2xDP2 (the tied embedding in a bucket of its own), 10 steps with the
flag equal the same layout without it: `lm loss` and `num-zeros` bitwise (fp32 a+b is commutative,
so the reduce-scatter sums as the all-reduce did; Adam is elementwise and pieces keep the
kernels' element grouping), grad-norm and params-norm to 1e-14 relative (float64 sums of squares
taken over owned pieces and then over all ranks: another order; measured <= 5e-16 here). They
also equal the single-process run within the layout tolerance. DP1 with the flag is the plain
optimizer bit for bit. DP4 equals the plain run to fp32 rounding. And per rank, the allocated bytes after a step drop by half of Adam's two
moments plus half of the gradients.
"""

import pytest

from support.metrics import relative
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags

ITERS = ["--train-iters", "10"]
DISTOPT = ["--use-distributed-optimizer"]
LAYOUTS = {"DP2": (2, 1, 1), "TP2xDP2": (4, 2, 1), "PP2xDP2": (4, 1, 2), "DP4": (4, 1, 1)}  # (processes, tp, pp)
# gloo's 4-rank reduce-scatter adds in another order than its all-reduce: DP4 equals the plain run
# to fp32 rounding only (measured: loss 3.5e-8 relative after 10 steps, num-zeros +-2).
BITWISE = {"DP2", "TP2xDP2", "PP2xDP2"}
LAYOUT_RTOL = 1e-5  # tests/distributed/test_layouts.py
NORM_RTOL = 1e-14
MEMORY_FLAGS = TINY_MODEL + NO_DROPOUT + ["--train-iters", "3", "--log-memory-to-tensorboard"]
ONE_RANK_SHARDED = (1, TINY_MODEL + NO_DROPOUT + ITERS + DISTOPT)


def _declared_runs() -> dict[str, tuple[int, list[str]]]:
    """Each layout with and without the flag, the memory pair, and the flag on one rank."""
    runs = {"memory plain": (2, MEMORY_FLAGS), "memory sharded": (2, MEMORY_FLAGS + DISTOPT), "flagged": ONE_RANK_SHARDED}
    for name, (nproc, tp, pp) in LAYOUTS.items():
        flags = TINY_MODEL + NO_DROPOUT + ITERS + layout_flags(tp, pp)
        runs[f"{name} plain"] = (nproc, flags)
        runs[f"{name} sharded"] = (nproc, flags + DISTOPT)
    return runs


SHARED_RUNS = _declared_runs()  # support/shared_runs.py: the session's runs of one process count in one launch


@pytest.fixture(scope="module")
def runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_distributed_optimizer_equals_plain_and_single_process(name, runs, tiny_single_process):
    plain, sharded = runs[f"{name} plain"], runs[f"{name} sharded"]
    assert [s["iteration"] for s in sharded] == list(range(1, 11))
    for ours, ref, single in zip(sharded, plain, tiny_single_process):
        it = ours["iteration"]
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], single[key]) <= LAYOUT_RTOL, (name, it, key, ours[key], single[key])
        if name not in BITWISE:
            assert relative(ours["lm_loss"], ref["lm_loss"]) <= LAYOUT_RTOL, (name, it, ours["lm_loss"], ref["lm_loss"])
            assert abs(ours["num_zeros"] - ref["num_zeros"]) <= 5, (name, it, ours["num_zeros"], ref["num_zeros"])
            continue
        assert ours["lm_loss"] == ref["lm_loss"], (name, it, ours["lm_loss"], ref["lm_loss"])
        assert ours["num_zeros"] == ref["num_zeros"], (name, it, ours["num_zeros"], ref["num_zeros"])
        for key in ("grad_norm", "params_norm"):
            assert relative(ours[key], ref[key]) <= NORM_RTOL, (name, it, key, ours[key], ref[key])


def test_one_data_parallel_rank_is_the_plain_optimizer_bit_for_bit(runs, tiny_single_process):
    flagged = runs["flagged"]
    keys = ("lm_loss", "grad_norm", "num_zeros", "params_norm")
    assert [[s[k] for k in keys] for s in flagged] == [[s[k] for k in keys] for s in tiny_single_process]


def test_sharded_adam_state_lowers_allocated_bytes(runs):
    plain, sharded = runs["memory plain"], runs["memory sharded"]
    # Plain, after a step: fp32 parameters, gradients and Adam's two moments, four model copies
    # (plus 4-byte step counters). Sharded: the parameters, this rank's half of the gradients
    # (the full ones are freed once reduce-scattered) and its half of the moments: the saving is
    # 3 x 1/2 model copy (Adam of the other rank's range: 1 copy; its gradients: 1/2), up to
    # bucket padding and the step counters of pieces not owned.
    model_copy = plain[-1]["mem_allocated"] / 4
    saving = plain[-1]["mem_allocated"] - sharded[-1]["mem_allocated"]
    assert abs(saving / model_copy - 1.5) < 0.01, (plain[-1]["mem_allocated"], sharded[-1]["mem_allocated"])
    assert sharded[-1]["mem_max_allocated"] < plain[-1]["mem_max_allocated"]
