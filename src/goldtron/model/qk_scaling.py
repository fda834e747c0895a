"""The attention scores' scale and softmax, with Megatron's `--apply-query-key-layer-scaling`.

Plain: scores = q k^T / sqrt(d), causal mask, softmax. With layer scaling, layer L (1-based,
global) divides the scores by a further L before the softmax and multiplies them back by L in
fp32 inside it (Megatron's `softmax_scale /= layer_number` and the fused softmax's `scale`), so the
probabilities are the same; the point is that fp16 scores of deep layers stay in range. Megatron
forces the softmax into fp32 with it (validation does too). In fp32 and bf16 it changes nothing
but rounding: (x / L) * L is x up to one rounding each way.
"""

from __future__ import annotations

import math

import torch


class QueryKeyScaling:
    def __init__(self, head_dim: int, layer_number: int | None):
        self.layer_number = layer_number  # None: no layer scaling
        self.score_scale = 1.0 / math.sqrt(head_dim)
        if layer_number is not None:
            self.score_scale /= layer_number

    def softmax(self, scores: torch.Tensor, masked: torch.Tensor, in_fp32: bool) -> torch.Tensor:
        """Probabilities from scaled scores; `masked` [s, s] is True where a query may not look."""
        if self.layer_number is not None:
            scores = scores.float() * self.layer_number
        scores = scores.masked_fill(masked, float("-inf"))
        return torch.softmax(scores.float() if in_fp32 else scores, dim=-1)
