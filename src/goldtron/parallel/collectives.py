"""Collectives that skip single-rank groups, and the autograd-aware ones tensor parallelism needs.

A `None` group means "this dimension has size 1": every function here is then the identity,
so a TP1/PP1/DP1 run pays for no communication at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_(tensor: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_reduce_flat_(tensors: list[torch.Tensor], group, op=dist.ReduceOp.SUM) -> None:
    """All-reduce many tensors as one flat buffer: one collective instead of many.

    gloo's per-call latency dominates small tensors (DESIGN.md: ~6 ms per call with 4 ranks
    on 2 cores), so gradients are reduced in one bucket per dtype.
    """
    if group is None or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for same in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        dist.all_reduce(flat, op=op, group=group)
        offset = 0
        for t in same:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


class _CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; all-reduce of the input-gradient backward (column-parallel input)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_(grad.contiguous(), ctx.group), None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """All-reduce forward (row-parallel output); identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        # A fresh buffer: the input may still be needed by autograd elsewhere.
        return all_reduce_(x.clone(memory_format=torch.contiguous_format), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tensor_parallel(x: torch.Tensor, group) -> torch.Tensor:
    return x if group is None else _CopyToTensorParallel.apply(x, group)


def reduce_from_tensor_parallel(x: torch.Tensor, group) -> torch.Tensor:
    return x if group is None else _ReduceFromTensorParallel.apply(x, group)
