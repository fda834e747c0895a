"""Layout-independent initialisation: every full weight is a pure function of (seed, name).

Megatron's `--use-cpu-initialization` makes the full weight and then takes a shard; goldtron
always does, and goes one step further by seeding each tensor from its global name, so a
weight is the same whether this rank builds one pipeline stage or all of them. That is what
lets a TP2 x PP2 run be compared with a single-process run at all.
"""

from __future__ import annotations

import hashlib
import math

import torch


def _generator_for(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def normal_full(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """The full fp32 weight `name`, drawn from N(0, std) on the CPU (bitwise the same everywhere)."""
    out = torch.empty(shape, dtype=torch.float32)
    out.normal_(0.0, std, generator=_generator_for(seed, name))
    return out


def output_projection_std(init_method_std: float, num_layers: int) -> float:
    """Megatron scales the init of attention-out and fc2 by 1/sqrt(2L) (residual-stream growth)."""
    return init_method_std / math.sqrt(2.0 * num_layers)
