"""Tensor-parallel slicing: a rank's part of a full tensor (layers keep their shard of the full
weight drawn in model/init.py, tests cut the expected shard of a reference the same way)."""

from __future__ import annotations

import torch


def shard(full: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of `full` along `dim` (sizes are validated to divide)."""
    size = full.shape[dim] // world
    return full.narrow(dim, rank * size, size).clone()


def shard_blocks(full: torch.Tensor, dim: int, rank: int, world: int, blocks: int) -> torch.Tensor:
    """`full` is `blocks` equal blocks along `dim` (SwiGLU's fc1: [gate; up]); this rank's slice of
    each, concatenated in block order, so every rank holds matching rows of every block."""
    if blocks == 1:
        return shard(full, dim, rank, world)
    return torch.cat([shard(block, dim, rank, world) for block in full.chunk(blocks, dim)], dim)
