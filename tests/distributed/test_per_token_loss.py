"""--calculate-per-token-loss: Megatron's normalization by the step's total loss tokens (all
micro-batches, all DP ranks) instead of each micro-batch's own count.

- In one process, one step on micro-batches with different loss masks (so the two normalizations
  differ): the gradients are those of sum(all masked token losses) / sum(all mask tokens), by hand,
  and not those of the per-micro-batch mean; the logged `lm loss` is that token-weighted mean
  (what Megatron logs, with or without the flag).
- 10 steps at DP2, PP2, DP2 with the distributed optimizer and DP2 with --overlap-grad-reduce
  equal the single-process run with the flag and the single-process run without it within the
  layout tolerance: the embedded mock data masks no token, so every micro-batch has the same count
  and the two normalizations are the same arithmetic up to fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from goldtron.arguments import parse_args
from goldtron.model.gpt import GPTStage
from goldtron.parallel.p2p import PipelineP2P
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.schedule import MicroBatch, Schedule
from goldtron.training.checkpointer import NullCheckpointer
from goldtron.training.loop import Trainer
from goldtron.training.lr_schedule import LRSchedule
from goldtron.training.memory import MemoryStats
from goldtron.training.metrics_file import MetricsFile
from goldtron.training.optimizer import build_optimizer
from goldtron.training.progress import TrainingProgress
from support.metrics import relative
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags

PER_TOKEN = ["--calculate-per-token-loss"]
ITERS = ["--train-iters", "10"]
LAYOUT_RTOL = 1e-5  # tests/distributed/test_layouts.py
# The hand computation divides each micro-batch's loss by the token count before backward, the
# trainer divides the accumulated gradient after it: the same products in another order, fp32
# rounding ~1e-7 relative on the gradient norm.
HAND_RTOL = 1e-5
# The logged loss: the trainer adds the micro-batches' fp32 sums in float64, the hand adds them in
# fp32: ~4e-8 apart. The per-micro-batch mean of these masks is ~1e-3 away.
LOSS_RTOL = 1e-6
LAYOUTS = {  # name: (processes, flags)
    "DP2": (2, PER_TOKEN),
    "PP2": (2, PER_TOKEN + layout_flags(1, 2)),
    "DP2 distopt": (2, PER_TOKEN + ["--use-distributed-optimizer"]),
    "DP2 overlap": (2, PER_TOKEN + ["--overlap-grad-reduce", "--ddp-bucket-size", "20000"]),
    # Context parallelism: each rank's loss sum over its chunks, tokens counted over DP x CP.
    "CP2": (2, PER_TOKEN + ["--context-parallel-size", "2"]),
}


def _micro_batches(seed: int, count: int) -> list[MicroBatch]:
    """Micro-batch i masks the first 5 x i tokens of its first sample: counts 64, 59, 54, 49."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        tokens = torch.randint(0, 1001, (2, 33), generator=g)
        mask = torch.ones(2, 32)
        mask[0, : 5 * i] = 0
        batches.append(MicroBatch(tokens[:, :-1], tokens[:, 1:], mask, torch.arange(32).expand(2, 32)))
    return batches


def _one_trainer_step(ps, extra: list[str], batches: list[MicroBatch]) -> tuple[torch.nn.Module, float]:
    """The trainer's own step (schedule, reduction, per-token division, optimizer) on `batches`:
    the model, whose .grad the step leaves in place, and the logged lm loss."""
    args = parse_args([*TINY_MODEL, *NO_DROPOUT, "--train-iters", "1", "--lr-warmup-iters", "0", "--clip-grad", "0",
                       *extra])
    model = GPTStage(args, ps, DropoutRNG(args.seed, 0, 0, ps.device))
    optimizer = build_optimizer(model, args, ps)
    schedule = Schedule(model, ps, PipelineP2P(ps, (2, 32, 64), args.params_dtype),
                        per_token_loss=args.calculate_per_token_loss)
    trainer = Trainer(args, ps, model, optimizer, LRSchedule.from_args(args), schedule, None, None,
                      MemoryStats(ps.device, enabled=False, release=ps.backend_release), TrainingProgress(),
                      NullCheckpointer(), MetricsFile(None))
    trainer._micro_batches = lambda dataset, first_sample: batches
    return model, trainer.train_step()["lm_loss"]


def _hand_gradients(ps, batches: list[MicroBatch]) -> tuple[list[torch.Tensor], float]:
    """d/dW [sum over all micro-batches of the masked token losses / all mask tokens], and that loss."""
    args = parse_args([*TINY_MODEL, *NO_DROPOUT, "--train-iters", "1", "--lr-warmup-iters", "0"])
    model = GPTStage(args, ps, DropoutRNG(args.seed, 0, 0, ps.device))
    total_tokens = sum(mb.loss_mask.sum() for mb in batches)
    loss_sum = sum((model.loss(model(mb.tokens, mb.position_ids), mb.labels) * mb.loss_mask).sum() for mb in batches)
    (loss_sum / total_tokens).backward()
    return [p.grad.clone() for p in model.parameters()], float(loss_sum.detach() / total_tokens)


def _relative_difference(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    diff = torch.sqrt(sum(((a.double() - b.double()) ** 2).sum() for a, b in zip(ours, ref)))
    return float(diff / torch.sqrt(sum((b.double() ** 2).sum() for b in ref)))


def test_per_token_normalization_is_the_hand_computation(one_rank_state):
    batches = _micro_batches(seed=3, count=4)
    hand, hand_loss = _hand_gradients(one_rank_state, batches)
    model, logged = _one_trainer_step(one_rank_state, PER_TOKEN, batches)
    assert _relative_difference([p.grad for p in model.parameters()], hand) <= HAND_RTOL
    # Megatron logs the token-weighted mean (sum of losses / sum of tokens over the step).
    assert relative(logged, hand_loss) <= LOSS_RTOL
    # Without the flag each micro-batch is normalized by its own count: another gradient here.
    default_model, default_logged = _one_trainer_step(one_rank_state, [], batches)
    assert _relative_difference([p.grad for p in default_model.parameters()], hand) > 1e-3
    assert relative(default_logged, hand_loss) <= LOSS_RTOL  # the logged loss is the same either way


SHARED_RUNS = {  # support/shared_runs.py: the session's runs of one process count in one launch
    "single": (1, TINY_MODEL + NO_DROPOUT + ITERS + PER_TOKEN),
    **{name: (nproc, TINY_MODEL + NO_DROPOUT + ITERS + flags) for name, (nproc, flags) in LAYOUTS.items()},
}


@pytest.fixture(scope="module")
def runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_per_token_loss_layouts_equal_the_single_process(name, runs, tiny_single_process):
    assert [s["iteration"] for s in runs[name]] == list(range(1, 11))
    for reference in (runs["single"], tiny_single_process):
        for ours, ref in zip(runs[name], reference, strict=True):
            for key in ("lm_loss", "grad_norm", "params_norm"):
                assert relative(ours[key], ref[key]) <= LAYOUT_RTOL, (name, ours["iteration"], key, ours[key], ref[key])
