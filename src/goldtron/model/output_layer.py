"""The LM head (last stage): logits for this rank's vocabulary slice, with optional deferral of
its weight-gradient GEMM (`--defer-embedding-wgrad-compute`, `--wgrad-deferral-limit`).

Deferral, as Megatron does it: in backward, the input-gradient dX = dY W is computed at once
(the previous stage is waiting for it), but the weight-gradient dW = dY^T X is skipped and the
pair (X, dY) kept. `drain_deferred_wgrads` does the kept GEMMs after the pipeline flush, before
gradients are reduced. With limit L > 0 only the first L micro-batches of a step are deferred.

Under --sequence-parallel the input (the final norm's output) is this rank's sequence part: it
is all-gathered first (its gradient reduce-scattered), and the GEMMs, kept pairs included, see
the whole sequence. Megatron keeps the sequence part instead and gathers it again at the drain;
keeping the gathered input costs TP times its bytes per deferred micro-batch and saves that
collective (the math is the same).
"""

from __future__ import annotations

import torch
from torch import nn

from goldtron.parallel.collectives import copy_to_tensor_parallel
from goldtron.parallel.sequence_parallel import gather_from_sequence_parallel


class DeferredWgradBuffer:
    """The (input, output-gradient) pairs whose weight-gradient has not been computed yet."""

    def __init__(self, limit: int):
        self.limit = limit  # 0 = defer every micro-batch of the step
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.deferred_this_step = 0
        self.drained_gemms = 0  # total count, so tests can see where the GEMMs ran

    def start_step(self) -> None:
        # Nothing may carry across steps (or into checkpoints).
        self.pending.clear()
        self.deferred_this_step = 0

    def should_defer(self) -> bool:
        return self.limit == 0 or self.deferred_this_step < self.limit

    def keep(self, x: torch.Tensor, grad_output: torch.Tensor) -> None:
        # Detached: the drain's GEMM must not record autograd history (x requires grad).
        self.pending.append((x.detach(), grad_output.detach()))
        self.deferred_this_step += 1

    def kept_bytes(self) -> int:
        return sum(x.numel() * x.element_size() + g.numel() * g.element_size() for x, g in self.pending)


def _wgrad(x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """dW = dY^T X over all tokens, returned in fp32 (the main-gradient dtype)."""
    return torch.matmul(grad_output.reshape(-1, grad_output.shape[-1]).t(), x.reshape(-1, x.shape[-1])).float()


class _OutputLinear(torch.autograd.Function):
    """logits = X W_real^T whose weight-gradient is added to `W.grad` by the layer itself.

    Autograd would return dW for the slice W[:real_rows] and then pay a zero-filled full-size
    copy per micro-batch to turn it into W's gradient; adding dY^T X into the real rows of
    `W.grad` in place (now, or at the drain when deferred) avoids that, and is the same place
    the deferred GEMMs accumulate into. The weight input therefore gets no autograd gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return torch.matmul(x, layer.real_weight(weight).t())

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        layer: OutputLayer = ctx.layer
        grad_output = grad_output.to(layer.compute_dtype)
        grad_x = torch.matmul(grad_output, layer.real_weight(layer.weight))
        if layer.deferred is not None and layer.deferred.should_defer():
            layer.deferred.keep(x, grad_output)
        else:
            layer.accumulate_wgrad(x, grad_output)
        return grad_x, None, None


class OutputLayer(nn.Module):
    """logits = X W_real^T, where W is this rank's vocab slice (tied to the word embedding or not).

    Only the real (unpadded) rows enter the product: padded ids never get a logit, so the loss
    does not depend on the padding. Megatron differs here: it masks nothing, so its padded rows
    (initialised like every other row, then trained by the softmax's gradient, which pushes their
    logits down) are logits in its softmax, and its loss depends on the padding. A Megatron
    checkpoint run here gives the loss of its real rows alone (docs/checkpoints.md measures the
    difference).
    """

    def __init__(self, weight: nn.Parameter, ps, compute_dtype: torch.dtype, defer_limit: int | None,
                 sequence_parallel: bool = False):
        super().__init__()
        self.weight = weight
        self.tp_group, self.release = ps.tp_group, ps.backend_release
        self.sequence_parallel = sequence_parallel
        self.compute_dtype = compute_dtype
        self.deferred = None if defer_limit is None else DeferredWgradBuffer(defer_limit)
        # Called with the weight after each in-place wgrad add (now or at the drain): autograd's
        # gradient hooks never see these (training/grad_readiness.py counts them for --overlap-grad-reduce).
        self.wgrad_listeners: list = []

    def real_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach()[: weight.real_rows].to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            x = gather_from_sequence_parallel(x, self.tp_group, self.release)
        else:
            x = copy_to_tensor_parallel(x, self.tp_group, self.release)
        return _OutputLinear.apply(x, self.weight, self)

    @torch.no_grad()
    def accumulate_wgrad(self, x: torch.Tensor, grad_output: torch.Tensor) -> None:
        """W.grad[real rows] += dY^T X, in fp32 (the main-gradient dtype).

        Under no_grad and on detached tensors: otherwise the in-place add would give the weight's
        .grad an autograd graph that keeps every dY alive until the next step (found by the
        mem-allocated-bytes test in tests/deferral).
        """
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
        self.weight.grad[: self.weight.real_rows] += _wgrad(x.detach(), grad_output.detach())
        for listener in self.wgrad_listeners:
            listener(self.weight)

    def drain_deferred_wgrads(self) -> None:
        """The kept weight-gradient GEMMs, first in first out, accumulated in fp32."""
        if self.deferred is None or not self.deferred.pending:
            return
        for x, grad_output in self.deferred.pending:
            self.accumulate_wgrad(x, grad_output)
            self.deferred.drained_gemms += 1
        self.deferred.pending.clear()
