"""Recomputation lowers the peak of allocated bytes (--log-memory-to-tensorboard, the CPU storage
counter of training/memory.py) by exactly the activations it stops keeping; selective less.

One process (TP1 x PP1, TINY_MODEL: 4 layers, micro-batch 2, seq 32, hidden 64, 4 heads, dropout
on), 4 micro-batches per step, 3 steps. Measured (bytes):

    run        peak from step 2   saving vs plain
    plain          6,449,368            -
    uniform 1      4,933,848        1,515,520  = what the 4 layers keep alive, less their 4 inputs
    block 2        5,691,608          757,760  = the same for the first 2 layers only (half)
    selective      6,052,056          397,312  = 4 layers x 3 [2,4,32,32] fp32 attention tensors
                                                 (+ the 32x32 bool causal mask) = 4 x 99,328

The peak is at the end of a micro-batch's forward, when every layer's activations and the LM
head's are alive; in backward, recomputing one layer (or chunk) costs less than the LM-head
activations already freed, so it does not set a new peak here (uniform 4 would: its one chunk
is all the layers). Step 1's peak (4,786,248 in every run) is the optimizer creating Adam's state,
so the comparison starts at step 2. After each step the allocated bytes are the same for every
run: recomputation keeps nothing across micro-batches or steps.
"""

import pytest

from deferral.worker_results import run_worker
from recompute.recompute_runs import DROPOUT_ON, SELECTIVE, bytes_alive_after_layers, full
from support.torchrun import TINY_MODEL

STEPS = 3
LAYERS = 4
RUNS = {"plain": [], "uniform1": full("uniform", 1), "block2": full("block", 2), "selective": SELECTIVE}


@pytest.fixture(scope="module")
def histories(tmp_path_factory):
    common = [*TINY_MODEL, *DROPOUT_ON, "--train-iters", str(STEPS), "--log-memory-to-tensorboard"]
    results = run_worker(tmp_path_factory.mktemp("memory"), 1, common, RUNS, timeout=300)
    return {name: ranks[0].history for name, ranks in results.items()}


def _peak_saving(histories, name: str) -> list[int]:
    """plain's peak minus this run's, at steps 2.. (step 1's peak is the optimizer's first step)."""
    return [ref["mem_max_allocated"] - ours["mem_max_allocated"]
            for ours, ref in list(zip(histories[name], histories["plain"]))[1:]]


def test_allocated_bytes_after_each_step_are_the_same_with_recomputation(histories):
    plain = [step["mem_allocated"] for step in histories["plain"]]
    for name in RUNS:
        ours = [step["mem_allocated"] for step in histories[name]]
        assert len(ours) == STEPS and ours == plain, (name, ours)


def test_full_recompute_saves_the_activations_of_the_recomputed_layers(histories, one_rank_state):
    kept_plain = bytes_alive_after_layers(one_rank_state, [])
    kept_uniform1 = bytes_alive_after_layers(one_rank_state, full("uniform", 1))
    expected = kept_plain - kept_uniform1  # what the layers keep alive, less the chunk inputs
    for saving in _peak_saving(histories, "uniform1"):
        assert saving == expected, (saving, expected)
    for saving in _peak_saving(histories, "block2"):  # the first 2 of the 4 layers
        assert saving == expected // 2, (saving, expected // 2)


def test_selective_saves_the_attention_tensors_only(histories):
    attention_bytes = 3 * (2 * 4 * 32 * 32 * 4) + 32 * 32
    for selective, full_uniform in zip(_peak_saving(histories, "selective"), _peak_saving(histories, "uniform1")):
        assert selective == LAYERS * attention_bytes, selective
        assert 0 < selective < full_uniform
