"""Rotary position embeddings (`--position-embedding-type rope`), with Megatron-Core's conventions.

Each head's first `rotary_dim` channels (kv_channels x --rotary-percent) are rotated by an angle
that grows with the position; the other channels pass through. Pair i has frequency
inv_freq[i] = 1 / base^(2i / rotary_dim), so position p turns it by p * inv_freq[i]. Which channels
form pair i: by default channel i and channel i + rotary_dim/2 ("rotate_half"); with
`--rotary-interleaved`, channels 2i and 2i + 1 (Megatron-Core's rotary_interleaved: the angle table
repeats each frequency twice in place, and the 90-degree turn maps (x_2i, x_2i+1) to (-x_2i+1, x_2i)).
The query-key dot product then depends on positions only through their difference.

The angle table is made in fp32 (position x frequency loses precision in bf16) and cast to the
activation dtype where it is applied, as Megatron does. It does not depend on TP or PP: every rank
computes the same table for its own heads.
"""

from __future__ import annotations

import torch
from torch import nn


def rotary_angles(seq_len: int, rotary_dim: int, base: float, device: torch.device | None = None,
                  interleaved: bool = False) -> torch.Tensor:
    """[seq_len, rotary_dim] fp32 angles for positions 0..seq_len-1: cat(freqs, freqs) on the last
    dim, or each frequency twice in a row (f0, f0, f1, f1, ...) when the pairs are interleaved."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(positions, inv_freq)
    if interleaved:
        return freqs.repeat_interleave(2, dim=-1)
    return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """The 90-degree turn of each pair: (x1, x2) -> (-x2, x1) on the two halves of the last dim,
    or on each (even, odd) channel pair in place when the pairs are interleaved."""
    if interleaved:
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((-odd, even), dim=-1).flatten(-2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x [..., seq, d]; cos, sin are [seq, rotary_dim]
    from rotary_angles with the same `interleaved`."""
    rotary_dim = cos.shape[-1]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = rotated * cos + rotate_half(rotated, interleaved) * sin
    return torch.cat((rotated, passed), dim=-1) if passed.shape[-1] else rotated


class RotaryEmbedding(nn.Module):
    """Applies RoPE to queries and keys [b, heads, s, d]; keeps the cos/sin tables of the last length.

    The tables are plain attributes, not buffers: they are derived from the flags, so they stay
    out of state_dict and checkpoints.
    """

    def __init__(self, rotary_dim: int, base: float, interleaved: bool = False,
                 positions: torch.Tensor | None = None):
        """`positions`: the sequence positions of the rows q and k will hold, when they are not
        0..s-1 (context parallelism holds two chunks of the sequence); their angles are the rows
        of the whole sequence's table, made once."""
        super().__init__()
        self.rotary_dim = rotary_dim
        self.base = base
        self.interleaved = interleaved  # --rotary-interleaved
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        if positions is not None:
            angles = rotary_angles(int(positions.max()) + 1, rotary_dim, base, positions.device, interleaved)[positions]
            self._fixed = (angles.cos(), angles.sin())

    def _cos_sin(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables
        if cached is None or cached[0].shape[0] != seq_len or cached[0].device != device:
            angles = rotary_angles(seq_len, self.rotary_dim, self.base, device, self.interleaved)
            self._tables = cached = (angles.cos(), angles.sin())
        return cached

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._fixed or self._cos_sin(q.shape[-2], q.device)
        return apply_rotary(q, cos, sin, self.interleaved), apply_rotary(k, cos, sin, self.interleaved)
