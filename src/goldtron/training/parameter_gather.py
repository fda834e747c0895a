"""--overlap-param-gather: the distributed optimizer's parameter all-gathers run during the next
forward instead of at the end of the optimizer step.

As Megatron (distributed_data_parallel.py's forward pre-hooks, non-aligned gathers): after the
step every bucket is stale. Before a module's forward runs, the buckets of its parameters are
gathered (launched now if not yet, then waited), and the next bucket in forward order is launched,
so its all-gather runs on the backend's thread while this module computes. Buckets hold the
parameters in reverse order, so the forward meets them last bucket first.

A module whose class has no forward of its own only holds parameters for its parent (the
position embedding's holder), so its parameters are gathered before its parent's forward.
Anything else that reads whole parameters (evaluation, a checkpoint save, the end of training)
calls `complete_all` first. Every DP rank runs the same forward, so the gathers are issued in the
same order on all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from goldtron.parallel.collectives import PendingCollective


def _holds_parameters_only(module: torch.nn.Module) -> bool:
    return type(module).forward is torch.nn.Module.forward


def parameters_before_forward(model: torch.nn.Module) -> dict[torch.nn.Module, list[torch.nn.Parameter]]:
    """module -> the parameters that must be whole before its forward runs."""
    modules = dict(model.named_modules())
    needed: dict[torch.nn.Module, list[torch.nn.Parameter]] = {}
    for name, module in modules.items():
        owner, owner_name = module, name
        while _holds_parameters_only(owner) and owner_name:
            owner_name = owner_name.rpartition(".")[0]
            owner = modules[owner_name]
        for p in module.parameters(recurse=False):
            needed.setdefault(owner, []).append(p)
    return needed


class OverlappedParameterGather:
    def __init__(self, model: torch.nn.Module, buckets: list[list[torch.nn.Parameter]],
                 launch: Callable[[int], PendingCollective], receive: Callable[[int, PendingCollective], None]):
        self.launch = launch
        self.receive = receive
        self.forward_order = list(reversed(range(len(buckets))))
        self.bucket_of = {id(p): b for b, params in enumerate(buckets) for p in params}
        self.stale: set[int] = set()
        self.pending: dict[int, PendingCollective] = {}
        for module, params in parameters_before_forward(model).items():
            needed = sorted({self.bucket_of[id(p)] for p in params}, reverse=True)
            module.register_forward_pre_hook(lambda _module, _inputs, needed=needed: self._before_forward(needed))

    def mark_stale(self) -> None:
        """After the optimizer step: every bucket's parameters are whole only on their owned ranges."""
        self.stale = set(self.forward_order)

    def _before_forward(self, buckets: list[int]) -> None:
        for b in buckets:
            if b in self.stale:
                self._complete(b)
                self._launch_next_after(b)

    def _complete(self, b: int) -> None:
        pending = self.pending.pop(b, None) or self.launch(b)
        self.receive(b, pending)
        self.stale.discard(b)

    def _launch_next_after(self, b: int) -> None:
        position = self.forward_order.index(b)
        if position + 1 < len(self.forward_order):
            following = self.forward_order[position + 1]
            if following in self.stale and following not in self.pending:
                self.pending[following] = self.launch(following)

    def complete_all(self) -> None:
        for b in self.forward_order:
            if b in self.stale:
                self._complete(b)
