"""Activation recomputation changes nothing but memory and time: with dropout on, every
recomputation setting gives losses, grad-norms, params-norms and num-zeros bitwise equal to the
run without it, at TP1 x PP1 and at TP2 x PP2 (4 gloo ranks, 1F1B, deferred LM-head wgrad).

Bitwise, not approximately: the recomputed forward runs the same ops on the same inputs in the
same order (deterministic mode, one thread, gloo's reproducible all-reduce), and draws the same
dropout masks because the generators are put back to their state at the first forward. A
recompute that drew fresh masks, or that left the generators advanced for later micro-batches,
changes the gradients at the first step (see test_recompute_inprocess.py for those mutants).

One torchrun launch per layout runs all settings on the same process groups (deferral worker:
one JSON per run and rank).
"""

import pytest
from deferral.worker_results import deferred, run_worker
from support.torchrun import TINY_MODEL, layout_flags

from recompute.recompute_runs import DROPOUT_ON, SELECTIVE, full

STEPS = 5
COMPARED = ("lm_loss", "grad_norm", "params_norm", "num_zeros")

# TINY_MODEL has 4 layers: 4 per stage at PP1, 2 per stage at PP2.
TP1PP1_RUNS = {
    "plain": [],
    "uniform1": full("uniform", 1),
    "uniform2": full("uniform", 2),
    "block2": full("block", 2),
    "selective": SELECTIVE,
    "legacy_selective": ["--recompute-activations"],
    "no_dropout": ["--hidden-dropout", "0", "--attention-dropout", "0"],  # only for the guard below
}
TP2PP2_RUNS = {
    "plain": [],
    "uniform1": full("uniform", 1),
    "uniform2": full("uniform", 2),
    "block1": full("block", 1),
    "selective": SELECTIVE,
}


def _launch(out_dir, nproc: int, tp: int, pp: int, runs: dict, extra: list[str]):
    common = [*TINY_MODEL, *DROPOUT_ON, *layout_flags(tp, pp), "--train-iters", str(STEPS), *extra]
    return run_worker(out_dir, nproc, common, runs, timeout=300)


@pytest.fixture(scope="module")
def tp1pp1(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("tp1pp1"), 1, 1, 1, TP1PP1_RUNS, [])


@pytest.fixture(scope="module")
def tp2pp2(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("tp2pp2"), 4, 2, 2, TP2PP2_RUNS, deferred(2))


def _assert_bitwise_equal_to_plain(results) -> None:
    plain = results["plain"]
    for name, ranks in results.items():
        if name == "no_dropout":
            continue
        for rank, record in ranks.items():
            assert len(record.history) == STEPS
            for ours, ref in zip(record.history, plain[rank].history):
                for key in COMPARED:
                    if key == "lm_loss" and not record.is_last_stage:
                        continue  # other stages have no loss (NaN there)
                    assert ours[key] == ref[key], (name, rank, ours["iteration"], key, ours[key], ref[key])


def test_tp1pp1_every_setting_is_bitwise_the_plain_run(tp1pp1):
    _assert_bitwise_equal_to_plain(tp1pp1)


def test_tp2pp2_with_deferral_every_setting_is_bitwise_the_plain_run(tp2pp2):
    assert [tp2pp2["plain"][r].is_last_stage for r in range(4)] == [False, False, True, True]
    assert tp2pp2["plain"][3].history[0]["kept_this_step"] == 2, "deferral must be on in this launch"
    _assert_bitwise_equal_to_plain(tp2pp2)


def test_dropout_is_really_on(tp1pp1):
    """Guards the tests above: the runs differ from the dropout-free run from the first step, so
    the masks did enter the loss and the gradients that were found equal."""
    for ours, dropout_free in zip(tp1pp1["plain"][0].history, tp1pp1["no_dropout"][0].history):
        assert ours["lm_loss"] != dropout_free["lm_loss"] and ours["grad_norm"] != dropout_free["grad_norm"]
