"""The core promise under Megatron's interleaved (virtual) pipeline: with V model chunks per rank
the tiny model trains 10 steps as the single-process run does (lm loss, grad-norm, params-norm
within 1e-5 relative, support/metrics.py says why; num-zeros within a handful), with deferral,
with recomputation, with the uneven-split flags, with a micro-batch group other than PP, and its
evaluation (the forward-only interleaved schedule) gives the same validation loss. A wrong layer
offset (chunk c of rank r holding another chunk's layers) or a tensor received for the wrong
(micro-batch, chunk) changes the loss at the first step.

The trace of the PP2 x VP2 run shows which chunk each forward and backward ran, in Megatron's
order (the timeline draws "micro-batch.chunk"). The launches: one per process count.
"""

from __future__ import annotations

import re

import pytest
from support.metrics import RTOL, assert_same_training, relative
from support.torchrun import NO_DROPOUT, TINY_MODEL, batched_log, layout_flags, train_batches_and_read

from goldtron.parallel.schedule_plan import schedule_table
from goldtron.training.timeline import box_label, boxes_of, draw, read_step, trace_folder

TEN = NO_DROPOUT + ["--train-iters", "10"]
VP2 = ["--num-virtual-stages-per-pipeline-rank", "2"]
EVAL = ["--eval-interval", "5", "--eval-iters", "1"]
FIVE_MICRO_BATCHES = ["--global-batch-size", "10"]  # micro-batch 2, DP1: M = 5
RECOMPUTE = ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
DEFER = ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "2"]
ACCOUNT_BOTH = ["--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"]
FIRST_LAST = ["--decoder-first-pipeline-num-layers", "2", "--decoder-last-pipeline-num-layers", "2"]


def _layers(n: int) -> list[str]:
    return ["--num-layers", str(n)]


REFERENCES = {  # name: single-process flags
    "single": TINY_MODEL + TEN + EVAL,
    "single 8 layers": TINY_MODEL + TEN + _layers(8),
    "single 6 layers": TINY_MODEL + TEN + _layers(6),
    "single M5": TINY_MODEL + TEN + FIVE_MICRO_BATCHES,
    "single 8 layers M5": TINY_MODEL + TEN + _layers(8) + FIVE_MICRO_BATCHES,
}
LAYOUTS = {  # name: (processes, tp, pp, extra flags, reference)
    "PP2xVP2": (2, 1, 2, VP2 + EVAL, "single"),
    "PP2xVP2 as layers per virtual stage 1": (2, 1, 2, ["--num-layers-per-virtual-pipeline-stage", "1"], "single"),
    "PP2xVP2 recompute uniform 1": (2, 1, 2, VP2 + RECOMPUTE, "single"),
    "PP2xVP2 M5 group 3": (2, 1, 2, VP2 + FIVE_MICRO_BATCHES +
                           ["--microbatch-group-size-per-virtual-pipeline-stage", "3"], "single M5"),
    "PP4xVP2": (4, 1, 4, VP2 + _layers(8), "single 8 layers"),
    "TP2xPP2xVP2 deferral limit 2": (4, 2, 2, VP2 + DEFER, "single"),
    "PP4xVP2 account embedding and loss (0,1,1,1,1,1,1,0)": (4, 1, 4, VP2 + _layers(6) + ACCOUNT_BOTH, "single 6 layers"),
    "PP4xVP2 first 2 last 2": (4, 1, 4, VP2 + _layers(8) + FIRST_LAST, "single 8 layers"),
    # The reference case gpt3_mcore_te_tp1_pp4_vp1_tunable_overlap's schedule flags (group 5 at PP4).
    "PP4xVP2 M5 group 5, p2p overlap flags": (4, 1, 4, VP2 + _layers(8) + FIVE_MICRO_BATCHES + [
        "--microbatch-group-size-per-virtual-pipeline-stage", "5", "--overlap-p2p-communication-warmup-flush"],
        "single 8 layers M5"),
}
TRACED = "PP2xVP2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("virtual_pipeline")
    layouts = {name: (nproc, TINY_MODEL + TEN + layout_flags(tp, pp) + extra)
               for name, (nproc, tp, pp, extra, _) in LAYOUTS.items()}
    tb = out / "tb"
    layouts[TRACED] = (2, layouts[TRACED][1] + ["--log-timers-to-tensorboard", "--tensorboard-dir", str(tb)])
    steps = train_batches_and_read(out, {**{name: (1, flags) for name, flags in REFERENCES.items()}, **layouts})
    return out, tb, steps


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_virtual_pipeline_layout_equals_single_process(name, runs):
    _, _, steps = runs
    assert [s["iteration"] for s in steps[name]] == list(range(1, 11))
    assert_same_training(steps[name], steps[LAYOUTS[name][4]], name)


def test_both_virtual_flags_give_the_same_run(runs):
    """--num-layers-per-virtual-pipeline-stage 1 on 4 layers at PP2 is two chunks per rank: the
    same run, bit for bit, as --num-virtual-stages-per-pipeline-rank 2."""
    _, _, steps = runs
    key = ("lm_loss", "grad_norm", "params_norm")
    assert [tuple(s[k] for k in key) for s in steps["PP2xVP2 as layers per virtual stage 1"]] == \
           [tuple(s[k] for k in key) for s in steps["PP2xVP2"]]


def _validation_losses(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"validation loss at [^|]*\| lm loss value: (\S+)", log)]


def test_interleaved_evaluation_equals_single_process(runs):
    out, _, _ = runs
    ours, reference = _validation_losses(batched_log(out, "PP2xVP2")), _validation_losses(batched_log(out, "single"))
    assert len(ours) == len(reference) == 2  # at iteration 5 and at the end
    for a, b in zip(ours, reference):
        assert relative(a, b) <= RTOL, (a, b)  # printed with 7 significant digits, well inside 1e-5


def test_trace_shows_the_chunk_of_each_forward_and_backward(runs, tmp_path):
    _, tb, _ = runs
    iteration, steps = read_step(trace_folder(tb), None)
    assert iteration == 10 and [s.pp_rank for s in steps] == [0, 1]
    for step in steps:
        forwards = [(mb, chunk) for kind, mb, _, _, chunk in step.spans if kind == "forward"]
        backwards = [(mb, chunk) for kind, mb, _, _, chunk in step.spans if kind == "backward"]
        assert forwards == schedule_table(4, 2, 2)  # Megatron's order, on every rank
        assert backwards == [(mb, 1 - chunk) for mb, chunk in schedule_table(4, 2, 2)]
    boxes = boxes_of(steps)
    labels = {box_label(b, True) for b in boxes if b.kind == "forward"}
    assert labels == {f"{mb}.{chunk}" for mb in range(4) for chunk in range(2)}
    drawn = draw([("PP2 x VP2", steps)], tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert {b.chunk for b in drawn["PP2 x VP2"] if b.kind == "backward"} == {0, 1}
