"""Adam with decoupled weight decay (Megatron's default optimizer) over the fp32 main weights, and
the one interface the loop and the checkpointer use, whichever kind of optimizer a run has.

No weight decay on biases and 1-D weights (LayerNorm), as Megatron. Parameters are fp32 here
even with --bf16 (layers cast to bf16 for compute), so they are the "main" weights and their
gradients and Adam state are fp32.

Two kinds share the interface (`Optimizer`): `ReplicatedOptimizer` (every DP rank holds all of
Adam's state; gradients are all-reduced) and `DistributedOptimizer` (ZeRO-1, in
distributed_optimizer.py). The loop and the checkpoint code never ask which one they hold.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from typing import Protocol

import torch

from goldtron.parallel.sequence_parallel import all_reduce_sequence_parallel_gradients, sequence_parallel_gradients
from goldtron.parallel.state import ParallelState
from goldtron.training import grads
from goldtron.training.eager_torch import eager_step, skip_dynamo_import_of_torch_optim


@dataclass
class HeldAdamState:
    """The Adam state this rank holds for one parameter: of the whole local tensor (flat_range
    None), or of the flat local elements [start, end) (the distributed optimizer's owned range)."""

    adam: dict
    flat_range: tuple[int, int] | None = None


class Optimizer(Protocol):
    """What the training loop and the checkpointer call on an optimizer."""

    param_groups: list[dict]  # the inner AdamW's: the LR is set here
    state: dict               # the inner AdamW's per-tensor state
    norm_group: object        # the group norms and num-zeros are summed over (None: model-parallel)

    def zero_grad(self) -> None: ...
    def reduce_gradients(self) -> None: ...
    def counted_views(self, use_grad: bool) -> list[torch.Tensor]: ...
    def gradients(self) -> list[torch.Tensor]: ...
    def step(self) -> None: ...
    # Whole parameters before anything but the next forward reads them (--overlap-param-gather).
    def finish_parameter_sync(self) -> None: ...
    def held_state(self, param: torch.nn.Parameter) -> HeldAdamState | None: ...


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return name.endswith(".bias") or param.dim() == 1


def build_optimizer(model: torch.nn.Module, args: Namespace, ps: ParallelState) -> Optimizer:
    """AdamW over the model; with --use-distributed-optimizer and DP > 1 the sharded one
    (training/distributed_optimizer.py). With DP = 1 there is nothing to shard: the flag then
    gives the plain AdamW, bit for bit."""
    if args.use_distributed_optimizer and ps.dp_cp_size > 1:
        from goldtron.training.distributed_optimizer import DistributedOptimizer
        return DistributedOptimizer(model, args, ps, lambda owned: adamw(owned, args))
    return ReplicatedOptimizer(model, args, ps)


def adamw(entries, args: Namespace) -> torch.optim.AdamW:
    """entries: (parameter name, parameter, the tensor AdamW updates: the parameter or a piece of it)."""
    decay, plain = [], []
    for name, param, target in entries:
        (plain if no_weight_decay(name, param) else decay).append(target)
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": plain, "weight_decay": 0.0}) if g["params"]]
    skip_dynamo_import_of_torch_optim()
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                             foreach=False)


class ReplicatedOptimizer:
    """AdamW over every local parameter; gradients all-reduced over DP (the mean), then over the
    embedding group for the tied word embedding (grads.reduce_gradients)."""

    norm_group = None  # a DP replica holds all of its gradients: sum over the model-parallel ranks

    def __init__(self, model: torch.nn.Module, args: Namespace, ps: ParallelState):
        self.ps = ps
        self.params = list(model.parameters())
        self.shared_embedding = model.shared_embedding_weight()
        self.inner = adamw([(name, param, param) for name, param in model.named_parameters()], args)
        self.average = not args.calculate_per_token_loss
        # With DP 1 there is no DP reduction to overlap: the plain path, bit for bit.
        self.overlapped = None
        if args.overlap_grad_reduce and ps.dp_cp_size > 1:
            from goldtron.training.overlapped_all_reduce import OverlappedAllReduce
            self.overlapped = OverlappedAllReduce(model, args, ps, self.average)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)
        if self.overlapped is not None:
            self.overlapped.reset()

    def reduce_gradients(self) -> None:
        ps = self.ps
        grads.reduce_gradients(self.params, ps, self.shared_embedding, self.average, self.overlapped)
        all_reduce_sequence_parallel_gradients(sequence_parallel_gradients(self.params, lambda p: p.grad),
                                               ps.tp_group, ps.backend_release)

    def counted_views(self, use_grad: bool) -> list[torch.Tensor]:
        return grads.counted_views(self.params, self.ps, use_grad)

    def gradients(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params]

    def step(self) -> None:
        eager_step(self.inner)

    def finish_parameter_sync(self) -> None:
        """Every parameter here is whole after step: nothing to wait for."""

    def held_state(self, param: torch.nn.Parameter) -> HeldAdamState | None:
        adam = self.inner.state.get(param)
        return HeldAdamState(adam) if adam else None


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
