"""Issue 4 in one process: where the weight-gradient GEMMs run, and the output-layer gradient of a
whole GPT stage with and without deferral (tied and untied, fp32 and --bf16).

Tolerance 1e-6 relative, as the issue asks; why it is not bitwise for 0 < L < M (the fp32 sum over
micro-batches is taken in another order) is explained in equality_checks.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import goldtron.model.output_layer as output_layer_module
from deferral.worker_results import tensor_relative_error
from goldtron.arguments import parse_args
from goldtron.model.gpt import GPTStage
from goldtron.model.output_layer import DeferredWgradBuffer, OutputLayer
from goldtron.parallel.collectives import BackendRelease
from goldtron.parallel.p2p import PipelineP2P
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.schedule import MicroBatch, Schedule
from support.torchrun import NO_DROPOUT, TINY_MODEL

M = 4
LIMITS = (0, 1, 2, M, M + 3)
TOLERANCE = 1e-6


def _micro_batch_tensors(seed: int, hidden: int = 16, vocab: int = 24, rows: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, rows // 2, hidden, generator=g) for _ in range(M)], torch.randn(vocab, hidden, generator=g)


class _CountingWgrad:
    """Stands in for output_layer._wgrad and counts the calls made in backward and in the drain."""

    def __init__(self, real):
        self.real, self.phase, self.calls = real, "backward", {"plain": 0, "backward": 0, "drain": 0}

    def __call__(self, x, grad_output):
        self.calls[self.phase] += 1
        return self.real(x, grad_output)


@pytest.mark.parametrize("limit", LIMITS)
def test_deferred_gemms_run_in_the_drain_not_in_backward(limit, monkeypatch):
    inputs, full_weight = _micro_batch_tensors(seed=limit)
    counter = _CountingWgrad(output_layer_module._wgrad)
    monkeypatch.setattr(output_layer_module, "_wgrad", counter)
    ps = SimpleNamespace(tp_group=None, backend_release=BackendRelease())

    def layer_with(defer_limit):
        weight = torch.nn.Parameter(full_weight.clone())
        weight.real_rows = full_weight.shape[0] - 3  # padded rows never enter the product
        return OutputLayer(weight, ps, torch.float32, defer_limit)

    plain, ours = layer_with(None), layer_with(limit)
    ours.deferred.start_step()
    for x in inputs:
        x_plain, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        counter.phase = "plain"  # the non-deferred twin computes its dW in backward, as it should
        plain(x_plain).square().sum().backward()
        counter.phase = "backward"
        ours(x_ours).square().sum().backward()
        # The input-gradient is not deferred: the previous stage gets exactly what it would.
        assert torch.equal(x_ours.grad, x_plain.grad)

    kept = M if limit == 0 else min(limit, M)
    assert counter.calls == {"plain": M, "backward": M - kept, "drain": 0}
    assert len(ours.deferred.pending) == kept
    if kept == M:
        assert ours.weight.grad is None, "no weight-gradient may exist before the drain"

    counter.phase = "drain"
    ours.drain_deferred_wgrads()
    assert counter.calls == {"plain": M, "backward": M - kept, "drain": kept}
    assert ours.deferred.drained_gemms == kept and not ours.deferred.pending
    assert tensor_relative_error(ours.weight.grad, plain.weight.grad) <= TOLERANCE
    assert not ours.weight.grad[ours.weight.real_rows:].any(), "padded rows got a gradient"
    assert ours.weight.grad.grad_fn is None, "the drain recorded autograd history on the gradient"


def test_start_of_step_drops_what_an_interrupted_step_left():
    buffer = DeferredWgradBuffer(limit=2)
    buffer.keep(torch.ones(2, 3), torch.ones(2, 5))
    buffer.keep(torch.ones(2, 3), torch.ones(2, 5))
    assert not buffer.should_defer() and buffer.kept_bytes() == 2 * (6 + 10) * 4
    buffer.start_step()
    assert buffer.pending == [] and buffer.should_defer() and buffer.kept_bytes() == 0


def _stage_args(extra: list[str]):
    args = parse_args([*TINY_MODEL, *NO_DROPOUT, "--train-iters", "10", *extra])
    return args


def _one_step_output_gradient(ps, extra: list[str], limit: int | None) -> torch.Tensor:
    """The output-layer weight-gradient of one step of M micro-batches (a whole GPT in one stage)."""
    args = _stage_args(extra)
    # Validation refuses deferral without PP > 1 (the drain hides in the flush); the mechanism
    # itself does not need a pipeline, so a one-stage model is built with it switched on here.
    args.defer_embedding_wgrad_compute = limit is not None
    args.wgrad_deferral_limit = limit or 0
    torch.manual_seed(0)
    model = GPTStage(args, ps, DropoutRNG(args.seed, 0, 0, ps.device))
    schedule = Schedule(model, ps, PipelineP2P(ps, (2, 32, 64), args.params_dtype))
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(M):
        tokens = torch.randint(0, 1001, (2, 33), generator=g)
        batches.append(MicroBatch(tokens[:, :-1], tokens[:, 1:], torch.ones(2, 32), torch.arange(32).expand(2, 32)))
    if model.output_layer.deferred is not None:
        model.output_layer.deferred.start_step()
    schedule.train_step(batches)
    schedule.drain_deferred_wgrads()
    weight = model.output_layer.weight
    return weight.grad[: weight.real_rows].clone()


@pytest.mark.parametrize("extra", [[], ["--untie-embeddings-and-output-weights"], ["--bf16"]],
                         ids=["tied", "untied", "bf16"])
def test_gpt_stage_output_gradient_equals_the_non_deferred_one(one_rank_state, extra):
    reference = _one_step_output_gradient(one_rank_state, extra, None)
    for limit in (0, 2):
        ours = _one_step_output_gradient(one_rank_state, extra, limit)
        # Tied with one stage: the same Parameter also gets the word-embedding gradient, so
        # this checks that the drain adds to, and does not overwrite, what backward left.
        assert tensor_relative_error(ours, reference) <= TOLERANCE, (extra, limit)
