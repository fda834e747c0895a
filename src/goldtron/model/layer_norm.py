"""LayerNorm computed in fp32 whatever the activation dtype (as Megatron's fused LN does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from goldtron.parallel.tensor_parallel import make_parameter


class LayerNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, device: torch.device):
        super().__init__()
        self.eps = eps
        # Replicated over TP (tensor_parallel_dim None): counted once in norms.
        self.weight = make_parameter(torch.ones(hidden), device, None)
        self.bias = make_parameter(torch.zeros(hidden), device, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), (x.shape[-1],), self.weight, self.bias, self.eps)
        return out.to(x.dtype)
