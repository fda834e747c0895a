"""The normalizations (`--normalization LayerNorm | RMSNorm`), computed in fp32 whatever the
activation dtype (as Megatron's fused kernels do).

RMSNorm is Megatron's: x / sqrt(mean(x^2) + eps) * weight, with no bias and no mean subtracted.

The weights are replicated over TP. A norm applied to TP-replicated activations (the layers'
norms) gets the same gradient on every TP rank. One applied to a rank's own heads (--qk-layernorm)
gets a part of it on each: built with `partial_over_tp`, its forward passes the weights through
copy_to_tensor_parallel (identity forward, all-reduce backward), which sums the parts as Megatron's
gradient finalization does, so every TP rank holds the full gradient.
Under --sequence-parallel the layers' norms see only this rank's sequence part: their weights
are marked `sequence_parallel` and their gradients summed over TP after backward
(parallel/sequence_parallel.py), once per step, as Megatron does.
"""

from __future__ import annotations

from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import nn

from goldtron.parallel.collectives import copy_to_tensor_parallel
from goldtron.parallel.sequence_parallel import mark_sequence_parallel
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import make_parameter


class _Norm(nn.Module):
    def __init__(self, eps: float, partial_over_tp: ParallelState | None):
        super().__init__()
        self.eps = eps
        self.tp_group = partial_over_tp.tp_group if partial_over_tp is not None else None
        self.release = partial_over_tp.backend_release if partial_over_tp is not None else None

    def _whole_gradient(self, param: torch.Tensor) -> torch.Tensor:
        return param if self.tp_group is None else copy_to_tensor_parallel(param, self.tp_group, self.release)


class LayerNorm(_Norm):
    def __init__(self, hidden: int, eps: float, device: torch.device, partial_over_tp: ParallelState | None = None):
        super().__init__(eps, partial_over_tp)
        # Replicated over TP (tensor_parallel_dim None): counted once in norms.
        self.weight = make_parameter(torch.ones(hidden), device, None)
        self.bias = make_parameter(torch.zeros(hidden), device, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._whole_gradient(self.weight), self._whole_gradient(self.bias)
        out = F.layer_norm(x.float(), (x.shape[-1],), weight, bias, self.eps)
        return out.to(x.dtype)


class RMSNorm(_Norm):
    def __init__(self, hidden: int, eps: float, device: torch.device, partial_over_tp: ParallelState | None = None):
        super().__init__(eps, partial_over_tp)
        self.weight = make_parameter(torch.ones(hidden), device, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), (x.shape[-1],), self._whole_gradient(self.weight), self.eps)
        return out.to(x.dtype)


def make_norm(args: Namespace, hidden: int, device: torch.device,
              partial_over_tp: ParallelState | None = None, on_sequence_part: bool = False) -> LayerNorm | RMSNorm:
    """The normalization --normalization names, over the last `hidden` channels, with --norm-epsilon.
    `on_sequence_part`: applied to a sequence-parallel activation (under --sequence-parallel)."""
    norm = RMSNorm if args.normalization == "RMSNorm" else LayerNorm
    module = norm(hidden, args.norm_epsilon, device, partial_over_tp)
    if on_sequence_part and args.sequence_parallel:
        for param in module.parameters():
            mark_sequence_parallel(param)
    return module
