"""Adam with decoupled weight decay (Megatron's default optimizer) over the fp32 main weights.

No weight decay on biases and 1-D weights (LayerNorm), as Megatron. Parameters are fp32 here
even with --bf16 (layers cast to bf16 for compute), so they are the "main" weights and their
gradients and Adam state are fp32.
"""

from __future__ import annotations

from argparse import Namespace

import torch


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return name.endswith(".bias") or param.dim() == 1


def build_optimizer(model: torch.nn.Module, args: Namespace) -> torch.optim.AdamW:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if no_weight_decay(name, param) else decay).append(param)
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": plain, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                             foreach=False)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
