"""--overlap-grad-reduce (and --overlap-param-gather) compute what the non-overlapped reduction
computes, with and without the distributed optimizer.

Each overlapped run is compared with the same layout without the overlap, 10 steps:
- replicated optimizer (DP2; TP2xDP2; PP2xDP2, also with deferred LM-head wgrads, whose gradient
  becomes final only at the drain, and with --no-align-grad-reduce): `lm loss`, `num-zeros`, grad-norm and params-norm bitwise. Every
  bucket's all-reduce sums each element over the two ranks (fp32 a + b = b + a) and divides after
  it, as the one-buffer reduction does, so the gradients are the same bits;
- distributed optimizer (DP2, PP2xDP2 with the tied embedding's bucket): `lm loss` and
  `num-zeros` bitwise; grad-norm and params-norm to 1e-14 relative, because the overlapped
  buckets (Megatron's reverse order, 20000 elements) give each rank other owned ranges, so the
  float64 sums of squares are taken in another order (as in test_distributed_optimizer.py);
- --overlap-param-gather on top of that: everything bitwise the overlapped reduction (only when
  the all-gather runs changes).
Every run also equals the single-process run within the layout tolerance.
"""

import pytest

from support.metrics import relative
from support.torchrun import (FLAG_ERROR_MONITOR_INTERVAL_S, NO_DROPOUT, TINY_MODEL, layout_flags, run_train,
                              train_batches_and_read)

ITERS = ["--train-iters", "10"]
# ~100K parameters: 20000-element buckets give several buckets per stage (default 40M: one).
OVERLAP = ["--overlap-grad-reduce", "--ddp-bucket-size", "20000"]
DISTOPT = ["--use-distributed-optimizer"]
GATHER = ["--overlap-param-gather"]
DEFER = ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "1"]
LAYOUT_RTOL = 1e-5  # tests/distributed/test_layouts.py
NORM_RTOL = 1e-14  # tests/distributed/test_distributed_optimizer.py

# name: (processes, tp, pp, flags of the plain run, flags the overlapped run adds, bitwise norms)
PAIRS = {
    "DP2": (2, 1, 1, [], OVERLAP, True),
    "DP2 one bucket": (2, 1, 1, [], ["--overlap-grad-reduce"], True),
    "DP2 distopt": (2, 1, 1, DISTOPT, OVERLAP, False),
    "TP2xDP2": (4, 2, 1, [], OVERLAP, True),
    "PP2xDP2": (4, 1, 2, [], OVERLAP, True),
    "PP2xDP2 deferred": (4, 1, 2, DEFER, OVERLAP, True),
    "PP2xDP2 not aligned": (4, 1, 2, [], OVERLAP + ["--no-align-grad-reduce"], True),
    "PP2xDP2 distopt": (4, 1, 2, DISTOPT, OVERLAP, False),
}
# name: (the overlapped run it must equal bit for bit, flags added to it)
GATHERED = {"DP2 distopt gather": ("DP2 distopt", GATHER), "PP2xDP2 distopt gather": ("PP2xDP2 distopt", GATHER)}


def _flags(tp: int, pp: int, extra: list[str]) -> list[str]:
    return TINY_MODEL + NO_DROPOUT + ITERS + layout_flags(tp, pp) + extra


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """Every pair (and the gathered runs): one launch per process count."""
    runs = {}
    for name, (nproc, tp, pp, plain, overlap, _) in PAIRS.items():
        runs[f"{name} plain"] = (nproc, _flags(tp, pp, plain))
        runs[f"{name} overlapped"] = (nproc, _flags(tp, pp, plain + overlap))
    for name, (base, extra) in GATHERED.items():
        nproc, tp, pp, plain, overlap, _ = PAIRS[base]
        runs[name] = (nproc, _flags(tp, pp, plain + overlap + extra))
    return train_batches_and_read(tmp_path_factory.mktemp("overlap"), runs)


@pytest.mark.parametrize("name", list(PAIRS))
def test_overlapped_reduction_equals_the_plain_one_and_the_single_process(name, runs, tiny_single_process):
    *_, bitwise_norms = PAIRS[name]
    plain, overlapped = runs[f"{name} plain"], runs[f"{name} overlapped"]
    assert [s["iteration"] for s in overlapped] == list(range(1, 11))
    for ours, ref, single in zip(overlapped, plain, tiny_single_process):
        it = ours["iteration"]
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], single[key]) <= LAYOUT_RTOL, (name, it, key, ours[key], single[key])
        for key in ("lm_loss", "num_zeros"):
            assert ours[key] == ref[key], (name, it, key, ours[key], ref[key])
        for key in ("grad_norm", "params_norm"):
            if bitwise_norms:
                assert ours[key] == ref[key], (name, it, key, ours[key], ref[key])
            else:
                assert relative(ours[key], ref[key]) <= NORM_RTOL, (name, it, key, ours[key], ref[key])


@pytest.mark.parametrize("name", list(GATHERED))
def test_overlapped_parameter_gather_is_bitwise_the_step_end_gather(name, runs):
    base, _ = GATHERED[name]
    keys = ("lm_loss", "grad_norm", "num_zeros", "params_norm")
    assert [[s[k] for k in keys] for s in runs[name]] == [[s[k] for k in keys] for s in runs[f"{base} overlapped"]]


def test_overlap_param_gather_without_the_distributed_optimizer_stops_every_rank():
    result = run_train(2, TINY_MODEL + ITERS + ["--overlap-grad-reduce", "--overlap-param-gather"], timeout=90,
                       check=False, monitor_interval=FLAG_ERROR_MONITOR_INTERVAL_S)
    assert result.returncode != 0
    for rank in range(2):
        assert f"error (rank {rank})" in result.stderr, result.stderr[-2000:]
    assert "--overlap-param-gather only supported with distributed optimizer" in result.stderr
    assert "Add --use-distributed-optimizer" in result.stderr
