"""Sequence parallelism (`--sequence-parallel`, TP > 1): Megatron's split of the sequence over the
tensor-parallel group outside the TP GEMMs.

Without it every TP rank holds the whole [b, s, h] activations of the layer norms, dropouts and
residual adds (the same values on every rank). With it rank r holds only the sequence positions
[r s/TP, (r+1) s/TP) there, and the collectives change places with the same sums:
- before a column-parallel linear: all-gather along the sequence (its backward: reduce-scatter),
  instead of the identity whose backward all-reduces;
- after a row-parallel linear: reduce-scatter along the sequence (its backward: all-gather),
  instead of the all-reduce;
- the word embedding's partial lookups are reduce-scattered instead of all-reduced (with learned
  positions Megatron all-reduces, adds the positions and keeps this rank's part: `scatter`).

Activations are [batch, seq, hidden] here, so the sequence is dim 1. Parameters that are
replicated over TP but see only this rank's part of the sequence (the layer norms, the
row-parallel biases) get a partial gradient on each TP rank; they are marked
`sequence_parallel = True` and their gradients summed over TP before the optimizer
(`all_reduce_sequence_parallel_gradients`), as Megatron's finalize_model_grads does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import BackendRelease, all_gather_flat_, all_reduce_flat_, reduce_scatter_

SEQUENCE_DIM = 1


def _tp_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _tp_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def gather_sequence(shard: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    """[b, s/TP, h] on each rank -> [b, s, h], rank r's positions at [r s/TP, (r+1) s/TP)."""
    size = _tp_size(group)
    if size == 1:
        return shard
    b, local, *rest = shard.shape
    # The backend splits the output along dim 0 into pieces shaped like the input: [TP b, s/TP, h].
    gathered = torch.empty((size * b, local, *rest), dtype=shard.dtype, device=shard.device)
    all_gather_flat_(gathered, shard.contiguous(), group, release)
    return gathered.view(size, b, local, *rest).transpose(0, 1).reshape(b, size * local, *rest)


def reduce_scatter_sequence(full: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    """[b, s, h] partial sums on each rank -> this rank's [b, s/TP, h] of their sum over TP."""
    size = _tp_size(group)
    if size == 1:
        return full
    # [TP b, s/TP, h]: each rank's part whole and in rank order along dim 0, as the backend splits it.
    by_rank = torch.cat(full.chunk(size, dim=SEQUENCE_DIM))
    out = torch.empty((full.shape[0], *by_rank.shape[1:]), dtype=full.dtype, device=full.device)
    return reduce_scatter_(out, by_rank, group, release)


def split_sequence(full: torch.Tensor, group) -> torch.Tensor:
    """This rank's [b, s/TP, h] of a [b, s, h] that every TP rank holds whole (no communication)."""
    size = _tp_size(group)
    if size == 1:
        return full
    return full.chunk(size, dim=SEQUENCE_DIM)[_tp_rank(group)].contiguous()


class _GatherFromSequenceParallel(torch.autograd.Function):
    """All-gather forward; reduce-scatter backward (each rank's gradient of the whole sequence is
    a part of the sum, as the input of a column-parallel GEMM)."""

    @staticmethod
    def forward(ctx, x, group, release):
        ctx.group, ctx.release = group, release
        return gather_sequence(x, group, release)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_sequence(grad.contiguous(), ctx.group, ctx.release), None, None


class _ReduceScatterToSequenceParallel(torch.autograd.Function):
    """Reduce-scatter forward (a row-parallel output, the embedding's lookups); all-gather backward."""

    @staticmethod
    def forward(ctx, x, group, release):
        ctx.group, ctx.release = group, release
        return reduce_scatter_sequence(x.contiguous(), group, release)

    @staticmethod
    def backward(ctx, grad):
        return gather_sequence(grad, ctx.group, ctx.release), None, None


class _ScatterToSequenceParallel(torch.autograd.Function):
    """This rank's part of a TP-replicated tensor forward; all-gather backward."""

    @staticmethod
    def forward(ctx, x, group, release):
        ctx.group, ctx.release = group, release
        return split_sequence(x, group)

    @staticmethod
    def backward(ctx, grad):
        return gather_sequence(grad, ctx.group, ctx.release), None, None


def gather_from_sequence_parallel(x: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    return x if group is None else _GatherFromSequenceParallel.apply(x, group, release)


def reduce_scatter_to_sequence_parallel(x: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    return x if group is None else _ReduceScatterToSequenceParallel.apply(x, group, release)


def scatter_to_sequence_parallel(x: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    return x if group is None else _ScatterToSequenceParallel.apply(x, group, release)


class SequenceGatheredLinear(torch.autograd.Function):
    """y = gather(x) W^T + b for a column-parallel linear under sequence parallelism, keeping only
    the sequence shard x for backward (Megatron's): backward gathers it again for the weight
    gradient, and reduce-scatters the input-gradient. Keeping the gathered input instead would
    hold TP times the bytes of the shard for every column-parallel layer until its backward."""

    @staticmethod
    def forward(ctx, shard, weight, bias, group, release):
        ctx.group, ctx.release = group, release
        ctx.has_bias = bias is not None
        ctx.save_for_backward(shard, weight)
        return torch.nn.functional.linear(gather_sequence(shard, group, release), weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        shard, weight = ctx.saved_tensors
        total = gather_sequence(shard, ctx.group, ctx.release)
        grad_output = grad_output.contiguous()
        grad_input = reduce_scatter_sequence(grad_output.matmul(weight), ctx.group, ctx.release)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = flat_grad.t().matmul(total.reshape(-1, total.shape[-1]))
        grad_bias = flat_grad.sum(0) if ctx.has_bias else None
        return grad_input, grad_weight, grad_bias, None, None


def mark_sequence_parallel(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """A TP-replicated parameter that sees only this rank's sequence part: its gradient is a part."""
    param.sequence_parallel = True
    return param


def sequence_parallel_gradients(params, gradient_of) -> list[torch.Tensor]:
    """The gradients (`gradient_of(param)`, None skipped) of the parameters marked sequence_parallel."""
    grads = (gradient_of(p) for p in params if getattr(p, "sequence_parallel", False))
    return [g for g in grads if g is not None]


def all_reduce_sequence_parallel_gradients(gradients: list[torch.Tensor], group, release: BackendRelease) -> None:
    """Sum the sequence-parallel parameters' gradients over TP, in one collective (Megatron's
    finalize_model_grads, after the DP reduction: both are sums, so the order does not matter)."""
    all_reduce_flat_(gradients, group, release)
