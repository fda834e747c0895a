"""Gradient buckets (Megatron's rules, training/grad_buckets.py), when backward makes a bucket ready
(training/grad_readiness.py), which parameters a module's forward needs whole
(training/parameter_gather.py), and the flag rules of the DP gradient reduction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from goldtron.arguments import ConfigError, parse_args
from goldtron.training.grad_buckets import bucket_parameters, resolve_bucket_size
from goldtron.training.grad_readiness import GradReadiness, contributions_per_micro_batch
from goldtron.training.parameter_gather import parameters_before_forward
from support.torchrun import TINY_MODEL


def _params(*sizes: int) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(n)) for n in sizes]


def test_buckets_take_parameters_in_reverse_and_close_at_the_size():
    a, b, c, d = _params(10, 30, 5, 20)
    assert bucket_parameters([a, b, c, d], 25) == [[d, c], [b], [a]]
    assert bucket_parameters([a, b, c, d], None) == [[d, c, b, a]]
    assert bucket_parameters([a, b, c, d], 1000) == [[d, c, b, a]]


def test_the_tied_embedding_gets_a_bucket_of_its_own():
    emb, x, y, out = _params(100, 3, 4, 100)
    assert bucket_parameters([emb, x, y, out], None, alone=emb) == [[out, y, x], [emb]]
    assert bucket_parameters([emb, x, y, out], 5, alone=out) == [[out], [y, x], [emb]]


def _args(**kw):
    base = dict(overlap_grad_reduce=True, ddp_bucket_size=None, ddp_num_buckets=None)
    return SimpleNamespace(**{**base, **kw})


def test_bucket_size_rules():
    assert resolve_bucket_size(_args(overlap_grad_reduce=False, ddp_bucket_size=7), 2, 0, 1000) is None
    assert resolve_bucket_size(_args(ddp_bucket_size=7), 2, 1, 1000) is None  # later stages never bucket
    assert resolve_bucket_size(_args(ddp_bucket_size=7), 2, 0, 1000) == 7
    assert resolve_bucket_size(_args(ddp_num_buckets=4), 2, 0, 1000) == 250
    assert resolve_bucket_size(_args(), 2, 0, 1000) == 40_000_000
    assert resolve_bucket_size(_args(), 64, 0, 1000) == 64_000_000


class _NoWeightGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class _InPlaceWgradLayer(torch.nn.Module):
    """Like model/output_layer.py: its function returns no weight-gradient (autograd's hook on the
    weight still runs); the layer adds it itself and tells its listeners."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.wgrad_listeners = []

    def forward(self, x):
        return _NoWeightGradient.apply(x, self.weight)

    def add_wgrad(self):
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
        self.weight.grad += 1.0
        for listener in self.wgrad_listeners:
            listener(self.weight)


class _TinyNet(torch.nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)
        self.head = _InPlaceWgradLayer(self.first.weight if tied else torch.nn.Parameter(torch.ones(4, 4)))

    def forward(self, x):
        return self.head(self.second(self.first(x)))


def test_contributions_count_autograd_and_in_place_sources():
    tied, untied = _TinyNet(tied=True), _TinyNet(tied=False)
    assert contributions_per_micro_batch(tied)[id(tied.first.weight)] == 2  # autograd + the LM head's add
    assert contributions_per_micro_batch(untied)[id(untied.head.weight)] == 2  # hook (no gradient) + the add
    assert contributions_per_micro_batch(untied)[id(untied.first.bias)] == 1  # autograd only


def test_a_bucket_is_launched_once_its_last_micro_batch_contribution_arrives():
    net = _TinyNet(tied=False)
    buckets = [[net.head.weight], [net.second.weight, net.second.bias], [net.first.weight, net.first.bias]]
    events = []
    readiness = GradReadiness(net, buckets, micro_batches=2, launch=lambda b: events.append(("launch", b)))
    for micro_batch in range(2):
        events.append(("backward", micro_batch))
        net(torch.ones(3, 4)).sum().backward()
        net.head.add_wgrad()
    # Nothing before the last micro-batch; then backward order (second's layer before first's); the
    # in-place weight-gradient comes after the backward here, as a drain would.
    assert events == [("backward", 0), ("backward", 1), ("launch", 1), ("launch", 2), ("launch", 0)]
    with pytest.raises(RuntimeError, match="changed after its bucket's reduction started"):
        net.head.add_wgrad()
    readiness.reset()
    readiness.launch_remaining()  # a step where backward never ran: all launched, in order
    assert events[-3:] == [("launch", 0), ("launch", 1), ("launch", 2)]


def test_later_stages_wait_for_the_end_of_backward_when_aligned():
    net = _TinyNet(tied=False)
    events = []
    readiness = GradReadiness(net, [list(net.parameters())], 1, lambda b: events.append(b), launch_when_ready=False)
    net(torch.ones(3, 4)).sum().backward()
    net.head.add_wgrad()
    assert events == []
    readiness.launch_remaining()
    assert events == [0]


def test_a_parameter_holder_is_gathered_before_its_parents_forward():
    class WithHolder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.holder = torch.nn.Module()  # no forward: its weight is used by this module's forward
            self.holder.weight = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return self.linear(x) + self.holder.weight

    net = WithHolder()
    needed = parameters_before_forward(net)
    assert needed[net] == [net.holder.weight]
    assert needed[net.linear] == [net.linear.weight, net.linear.bias]
    assert net.holder not in needed


BAD_COMBINATIONS = {
    "param gather without the distributed optimizer": (
        ["--overlap-grad-reduce", "--overlap-param-gather"],
        "--overlap-param-gather only supported with distributed optimizer"),
    "param gather without overlapped reduce": (
        ["--use-distributed-optimizer", "--overlap-param-gather"],
        "Must use --overlap-param-gather with --overlap-grad-reduce"),
    "per-token loss averaged in the collective": (
        ["--calculate-per-token-loss", "--ddp-average-in-collective"],
        "Cannot average in collective when calculating per-token loss!"),
    "bucket size and count": (
        ["--overlap-grad-reduce", "--ddp-bucket-size", "100", "--ddp-num-buckets", "2"],
        "Cannot specify both --ddp-num-buckets and --ddp-bucket-size"),
    "no buckets": (["--overlap-grad-reduce", "--ddp-num-buckets", "0"], "--ddp-num-buckets must be greater than 0"),
    "bucket size without overlap": (["--ddp-bucket-size", "100"], "given without --overlap-grad-reduce"),
    "FSDP2": (["--use-torch-fsdp2"], "--use-torch-fsdp2"),
}


@pytest.mark.parametrize("name", list(BAD_COMBINATIONS))
def test_bad_combinations_are_refused_with_megatrons_message_and_the_fix(name):
    extra, message = BAD_COMBINATIONS[name]
    with pytest.raises(ConfigError) as error:
        parse_args([*TINY_MODEL, "--train-iters", "10", *extra], world_size=2)
    assert message in str(error.value)


def test_the_reduction_flags_are_accepted_together():
    args = parse_args([*TINY_MODEL, "--train-iters", "10", "--use-distributed-optimizer", "--overlap-grad-reduce",
                       "--overlap-param-gather", "--ddp-num-buckets", "3", "--ddp-average-in-collective",
                       "--ddp-pad-buckets-for-high-nccl-busbw", "--no-align-grad-reduce", "--no-align-param-gather"],
                      world_size=2)
    assert args.overlap_param_gather and not args.align_grad_reduce and args.ddp_num_buckets == 3
