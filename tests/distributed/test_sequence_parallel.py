"""--sequence-parallel (issue 17, its sequence-parallel half): the same training as one process,
less activation memory per rank, and an exact resume.

Each run is built from its own flags:
- one 2-rank launch of this file: TP2 + SP (10 steps, memory counted), TP2 without SP (3 steps,
  memory counted), and the first half of the resume check (TP2 + SP, dropout on, selective
  recomputation, save at 3);
- in the session's shared 4-rank launches (support/shared_runs.py): TP4 + SP; TP2 x PP2 + SP with
  deferral (limit 2) and full recomputation; TP2 x DP2 + SP with the distributed optimizer and both
  overlaps; TP2 x PP2 with the interleaved pipeline (VP2) + SP.
The resume's second half loads in a launch of its own (a save and the load that checks it never
share processes). Layout equality: 1e-5 relative (support/metrics.py says why).
"""

import pytest

from checkpoint.ckpt_runs import assert_resumed_bitwise, rewind
from support.metrics import assert_same_training
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags, train_batches_and_read

SP = ["--sequence-parallel"]
TEN_STEPS = ["--train-iters", "10"]
MEMORY = ["--log-memory-to-tensorboard"]
DEFERRAL = ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "2"]
FULL_RECOMPUTE = ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
DISTRIBUTED_OPTIMIZER = ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
                         "--ddp-bucket-size", "20000"]

OWN_LAUNCH = {  # name: (processes, flags); the memory pair stays in a launch of its own
    "TP2+SP": (2, TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(2, 1) + SP + MEMORY),
}
SHARED_RUNS = {
    "TP4+SP": (4, TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(4, 1) + SP),
    "TP2xPP2+SP deferral full recompute": (4, TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(2, 2) + SP
                                           + DEFERRAL + FULL_RECOMPUTE),
    "TP2xDP2+SP distributed optimizer overlap": (4, TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(2, 1) + SP
                                                 + DISTRIBUTED_OPTIMIZER),
    "TP2xPP2xVP2+SP": (4, TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(2, 2) + SP
                       + ["--num-virtual-stages-per-pipeline-rank", "2"]),
}
EQUAL_TO_ONE_PROCESS = [*OWN_LAUNCH, *SHARED_RUNS]
MEMORY_STEPS = 3
TP2_MEMORY = (2, TINY_MODEL + NO_DROPOUT + ["--train-iters", str(MEMORY_STEPS)] + layout_flags(2, 1) + MEMORY)

RESUME_ITERS, RESUME_AT = 6, 3
RESUME_COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")


def _resume_flags(save) -> list[str]:
    """TP2 + SP with dropout on (the per-rank streams must come back) and selective recomputation
    (its replay of the attention dropout under SP), saving every RESUME_AT steps."""
    return (TINY_MODEL + layout_flags(2, 1) + SP + ["--recompute-granularity", "selective",
            "--train-iters", str(RESUME_ITERS), "--save", str(save), "--save-interval", str(RESUME_AT),
            "--load", str(save)])


@pytest.fixture(scope="module")
def sp_runs(tmp_path_factory, shared_runs):
    out = tmp_path_factory.mktemp("sequence_parallel")
    save = out / "ckpt"
    runs = train_batches_and_read(out, {**OWN_LAUNCH, "TP2 memory": TP2_MEMORY,
                                        "resume first": (2, _resume_flags(save))})
    return {**runs, **shared_runs.read(__name__, SHARED_RUNS)}, save, out


@pytest.mark.parametrize("name", EQUAL_TO_ONE_PROCESS)
def test_sequence_parallel_equals_single_process(name, sp_runs, tiny_single_process):
    runs, _, _ = sp_runs
    assert [s["iteration"] for s in runs[name]] == list(range(1, 11))
    assert_same_training(runs[name], tiny_single_process, name)


def _activation_bytes_sequence_parallelism_splits(tp: int) -> int:
    """What SP takes off the peak per rank: TINY_MODEL (4 layers, micro-batch 2, seq 32, hidden 64,
    fp32, dropout 0, so no masks) at the end of a micro-batch's forward, where every layer's
    activations are alive. Per layer, kept for backward outside the TP GEMMs: its input, the input
    norm's output (QKV's saved input), the residual after attention and the pre-MLP norm's output
    (fc1's saved input), each [b, s, h], and each norm's mean and rstd, [b, s]; then the final norm's
    input and statistics (its output is gathered for the LM head: the same bytes with or without
    SP). With SP each is [b, s/TP, ...]: (1 - 1/TP) of them no longer held."""
    layers, b, s, h, fp32 = 4, 2, 32, 64, 4
    per_layer = 4 * b * s * h + 2 * 2 * b * s
    final_norm = b * s * h + 2 * b * s
    return (layers * per_layer + final_norm) * fp32 * (tp - 1) // tp


def test_sequence_parallel_lowers_the_activation_peak_per_rank_by_the_split_activations(sp_runs):
    """The CPU byte counter (training/memory.py) of the logging rank, TP2 with and without SP, same
    model and data. After each step the same bytes are alive (parameters, gradients, Adam: SP
    shards no weight); the peak is lower by exactly the activations SP splits (measured: 3,150,488
    -> 3,008,920 bytes, 141,568 less). Step 1's peak is Adam's state being created: from step 2."""
    runs, _, _ = sp_runs
    with_sp, plain = runs["TP2+SP"][:MEMORY_STEPS], runs["TP2 memory"]
    assert [s["mem_allocated"] for s in with_sp] == [s["mem_allocated"] for s in plain]
    for ours, ref in list(zip(with_sp, plain))[1:]:
        assert ref["mem_max_allocated"] - ours["mem_max_allocated"] == _activation_bytes_sequence_parallelism_splits(2)


def test_resume_under_sequence_parallelism_is_bitwise_exact(sp_runs, tmp_path):
    runs, save, out = sp_runs
    first = runs["resume first"]
    rewind(save, RESUME_AT)
    second = train_batches_and_read(tmp_path, {"resume second": (2, _resume_flags(save))})["resume second"]
    assert [s["iteration"] for s in second] == list(range(RESUME_AT + 1, RESUME_ITERS + 1))
    assert_resumed_bitwise(second, first, RESUME_AT, RESUME_COMPARED)
