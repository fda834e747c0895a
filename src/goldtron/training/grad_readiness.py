"""--overlap-grad-reduce: notice, during backward, the moment a bucket's gradients are final.

A gradient is final for the step once every contribution to it has been added: one per
micro-batch from autograd (its post-accumulate-grad hook, which runs in every backward that
reaches the parameter, also when the function using it returns no gradient for it), and for the
LM-head weight one more per micro-batch from the output layer, which adds its weight-gradient in
place, in backward or, when deferred, at the drain (model/output_layer.py's `wgrad_listeners`).
Counting contributions, not backward passes, makes the rule hold for any schedule (1F1B,
interleaved) and for deferral without the schedule telling anyone.

A bucket whose count never completes (a parameter unused in some micro-batch) is launched by
`launch_remaining`, called after the last backward and the drain, as Megatron launches "any
remaining grad reductions". A contribution after its bucket was launched would be lost, so it
raises instead.

Every DP rank runs the same graph, so buckets complete in the same order on all of them: the
collectives are issued in the same order, as the backend requires.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _is_in_place_wgrad_layer(module: torch.nn.Module) -> bool:
    return getattr(module, "wgrad_listeners", None) is not None


def contributions_per_micro_batch(model: torch.nn.Module) -> dict[int, int]:
    """id(param) -> how many times per micro-batch its gradient is added to (see the module doc)."""
    counts = {id(p): 1 for p in model.parameters()}
    for module in model.modules():
        if _is_in_place_wgrad_layer(module):
            counts[id(module.weight)] += 1
    return counts


class GradReadiness:
    """Calls `launch(b)` as soon as every gradient of bucket `b` is final for the step (when
    `launch_when_ready`; otherwise all buckets wait for `launch_remaining`)."""

    def __init__(self, model: torch.nn.Module, buckets: list[list[torch.nn.Parameter]], micro_batches: int,
                 launch: Callable[[int], None], launch_when_ready: bool = True):
        self.buckets = buckets
        self.launch = launch
        self.launch_when_ready = launch_when_ready
        self.bucket_of = {id(p): b for b, params in enumerate(buckets) for p in params}
        self.names = {id(p): name for name, p in model.named_parameters()}
        per_micro_batch = contributions_per_micro_batch(model)
        self.expected = {key: micro_batches * count for key, count in per_micro_batch.items()}
        self.counts: dict[int, int] = {}
        self.waiting: list[int] = []
        self.launched: list[bool] = []
        self.reset()
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(self._contributed)
        for module in model.modules():
            if _is_in_place_wgrad_layer(module):
                module.wgrad_listeners.append(self._contributed)

    def reset(self) -> None:
        """A new step: no contribution yet, nothing launched."""
        self.counts = {key: 0 for key in self.bucket_of}
        self.waiting = [len(params) for params in self.buckets]
        self.launched = [False] * len(self.buckets)

    def _contributed(self, param: torch.Tensor) -> None:
        key = id(param)
        b = self.bucket_of[key]
        if self.launched[b]:
            raise RuntimeError(f"--overlap-grad-reduce: the gradient of {self.names.get(key, 'a parameter')} changed "
                               f"after its bucket's reduction started ({self.counts[key]} of {self.expected[key]} "
                               "expected contributions this step); the reduction would miss it")
        self.counts[key] += 1
        if self.counts[key] == self.expected[key]:
            self.waiting[b] -= 1
            if self.waiting[b] == 0 and self.launch_when_ready:
                self._launch(b)

    def _launch(self, b: int) -> None:
        self.launched[b] = True
        self.launch(b)

    def launch_remaining(self) -> None:
        """After the last backward and the drain: launch the buckets not launched yet, in order."""
        for b, launched in enumerate(self.launched):
            if not launched:
                self._launch(b)
