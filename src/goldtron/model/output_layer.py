"""The LM head (last stage): logits for this rank's vocabulary slice, with optional deferral of
its weight-gradient GEMM (`--defer-embedding-wgrad-compute`, `--wgrad-deferral-limit`).

Deferral, as Megatron does it: in backward, the input-gradient dX = dY W is computed at once
(the previous stage is waiting for it), but the weight-gradient dW = dY^T X is skipped and the
pair (X, dY) kept. `drain_deferred_wgrads` does the kept GEMMs after the pipeline flush, before
gradients are reduced. With limit L > 0 only the first L micro-batches of a step are deferred.
"""

from __future__ import annotations

import torch
from torch import nn

from goldtron.parallel.collectives import copy_to_tensor_parallel


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


class _LinearMaybeDeferWgrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, buffer, compute_dtype):
        ctx.buffer = buffer
        ctx.save_for_backward(x, weight)
        ctx.compute_dtype = compute_dtype
        return torch.matmul(x, weight.to(compute_dtype).t())

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.to(ctx.compute_dtype)
        grad_x = torch.matmul(grad_output, weight.to(ctx.compute_dtype))
        buffer: DeferredWgradBuffer | None = ctx.buffer
        if buffer is not None and buffer.should_defer():
            buffer.keep(x, grad_output)
            return grad_x, None, None, None
        return grad_x, _wgrad(x, grad_output), None, None


class OutputLayer(nn.Module):
    """logits = X W_real^T, where W is this rank's vocab slice (tied to the word embedding or not).

    Only the real (unpadded) rows enter the product: padded ids never get a logit, which is the
    same as Megatron's logits masked to -inf, and keeps the loss independent of the padding.
    """

    def __init__(self, weight: nn.Parameter, ps, compute_dtype: torch.dtype, defer_limit: int | None):
        super().__init__()
        self.weight = weight
        self.tp_group = ps.tp_group
        self.compute_dtype = compute_dtype
        self.deferred = None if defer_limit is None else DeferredWgradBuffer(defer_limit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tensor_parallel(x, self.tp_group)
        real = self.weight[: self.weight.real_rows]
        if self.deferred is None:
            return torch.matmul(x, real.to(self.compute_dtype).t())
        return _LinearMaybeDeferWgrad.apply(x, real, self.deferred, self.compute_dtype)

    @torch.no_grad()
    def drain_deferred_wgrads(self) -> None:
        """grad_W += dY^T X for each kept micro-batch, first in first out, accumulated in fp32.

        Under no_grad: otherwise `grad += dY^T X` with X requiring grad gives the weight's .grad an
        autograd graph that keeps every kept dY alive until the next step (found by the
        mem-allocated-bytes test in tests/deferral).
        """
        if self.deferred is None or not self.deferred.pending:
            return
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
        real_grad = self.weight.grad[: self.weight.real_rows]
        for x, grad_output in self.deferred.pending:
            real_grad += _wgrad(x, grad_output)
            self.deferred.drained_gemms += 1
        self.deferred.pending.clear()
