"""Tensor-parallel layers: each rank holds a slice of the full weight and communicates over TP.

Every layer is built from the *full* weight (drawn by model/init.py) and keeps its own shard
(parallel/tp_slicing.py), so the same seed gives the same model under any layout. Parameters carry two attributes that the
optimizer, norms and checkpoints read:
- `tensor_parallel_dim`: the dim along which the full tensor is split over TP (None = replicated);
- `tensor_parallel_blocks`: how many equal blocks along that dim are split over TP on their own
  (2 for SwiGLU's fc1 [gate; up]: a rank holds [its gate rows; its up rows]); 1 otherwise;
- `real_rows`: for vocab-sharded weights, how many leading local rows are real vocabulary
  (the rest is padding that never gets a gradient and is left out of norms and num-zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from goldtron.parallel.collectives import copy_to_tensor_parallel, reduce_from_tensor_parallel
from goldtron.parallel.sequence_parallel import (SequenceGatheredLinear, mark_sequence_parallel,
                                                 reduce_scatter_to_sequence_parallel)
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tp_slicing import shard, shard_blocks


def make_parameter(tensor: torch.Tensor, device: torch.device, tensor_parallel_dim: int | None,
                   tensor_parallel_blocks: int = 1) -> nn.Parameter:
    param = nn.Parameter(tensor.to(device))
    param.tensor_parallel_dim = tensor_parallel_dim
    param.tensor_parallel_blocks = tensor_parallel_blocks
    return param


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W split on its output dim; the input-gradient is all-reduced over TP.

    `blocks` > 1: the output dim is that many blocks, each split over TP on its own (see shard_blocks),
    so a rank's output is [its slice of block 0, its slice of block 1, ...].
    `sequence_parallel`: the input is this rank's sequence part, all-gathered here (its gradient
    reduce-scattered) instead of whole (parallel/sequence_parallel.py).
    """

    def __init__(self, full_weight: torch.Tensor, full_bias: torch.Tensor | None, ps: ParallelState,
                 compute_dtype: torch.dtype, blocks: int = 1, sequence_parallel: bool = False):
        super().__init__()
        self.tp_group, self.release = ps.tp_group, ps.backend_release
        self.compute_dtype = compute_dtype
        self.sequence_parallel = sequence_parallel and ps.tp_group is not None
        self.weight = make_parameter(shard_blocks(full_weight, 0, ps.tp_rank, ps.tp_size, blocks), ps.device, 0,
                                     blocks)
        self.bias = None
        if full_bias is not None:
            self.bias = make_parameter(shard_blocks(full_bias, 0, ps.tp_rank, ps.tp_size, blocks), ps.device, 0,
                                       blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        weight = self.weight.to(self.compute_dtype)
        if self.sequence_parallel:
            return SequenceGatheredLinear.apply(x, weight, bias, self.tp_group, self.release)
        x = copy_to_tensor_parallel(x, self.tp_group, self.release)
        return F.linear(x, weight, bias)


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W split on its input dim; partial outputs all-reduced, bias added after.
    `sequence_parallel`: reduce-scattered along the sequence instead, so the bias (replicated)
    is added to this rank's sequence part only and its gradient is a part (marked as such)."""

    def __init__(self, full_weight: torch.Tensor, full_bias: torch.Tensor | None, ps: ParallelState,
                 compute_dtype: torch.dtype, sequence_parallel: bool = False):
        super().__init__()
        self.tp_group, self.release = ps.tp_group, ps.backend_release
        self.compute_dtype = compute_dtype
        self.sequence_parallel = sequence_parallel and ps.tp_group is not None
        self.weight = make_parameter(shard(full_weight, 1, ps.tp_rank, ps.tp_size), ps.device, 1)
        self.bias = None if full_bias is None else make_parameter(full_bias, ps.device, None)
        if self.bias is not None and self.sequence_parallel:
            mark_sequence_parallel(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight.to(self.compute_dtype))
        if self.sequence_parallel:
            out = reduce_scatter_to_sequence_parallel(partial, self.tp_group, self.release)
        else:
            out = reduce_from_tensor_parallel(partial, self.tp_group, self.release)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out


def vocab_range(padded_vocab: int, real_vocab: int, ps: ParallelState) -> tuple[int, int, int]:
    """(first id, one past last id, number of real ids) owned by this TP rank."""
    per_rank = padded_vocab // ps.tp_size
    start = ps.tp_rank * per_rank
    real = max(0, min(real_vocab - start, per_rank))
    return start, start + per_rank, real


def vocab_parallel_weight(full_real: torch.Tensor, padded_vocab: int, ps: ParallelState) -> nn.Parameter:
    """This rank's rows of the padded [padded_vocab, h] weight; padding rows are zero."""
    start, end, real = vocab_range(padded_vocab, full_real.shape[0], ps)
    local = torch.zeros(end - start, full_real.shape[1], dtype=full_real.dtype)
    local[:real] = full_real[start : start + real]
    param = make_parameter(local, ps.device, 0)
    param.real_rows = real
    return param


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows are split over TP: ids outside this rank's range give zeros,
    and the partial lookups are summed over TP. `reduce_scatter` (sequence parallelism with
    nothing else added to the lookups before the split): the sum is reduce-scattered along the
    sequence, so each rank gets its sequence part (Megatron's reduce_scatter_embeddings)."""

    def __init__(self, full_real: torch.Tensor, padded_vocab: int, ps: ParallelState, compute_dtype: torch.dtype,
                 reduce_scatter: bool = False):
        super().__init__()
        self.tp_group, self.release = ps.tp_group, ps.backend_release
        self.compute_dtype = compute_dtype
        self.reduce_scatter = reduce_scatter
        self.vocab_start, self.vocab_end, _ = vocab_range(padded_vocab, full_real.shape[0], ps)
        self.weight = vocab_parallel_weight(full_real, padded_vocab, ps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_group is None:
            return F.embedding(ids, self.weight).to(self.compute_dtype)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        if self.reduce_scatter:
            return reduce_scatter_to_sequence_parallel(out, self.tp_group, self.release).to(self.compute_dtype)
        return reduce_from_tensor_parallel(out, self.tp_group, self.release).to(self.compute_dtype)
