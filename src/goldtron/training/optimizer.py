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


def build_optimizer(model: torch.nn.Module, args: Namespace, ps=None):
    """AdamW over the model; with --use-distributed-optimizer and DP > 1 the sharded one
    (training/distributed_optimizer.py). With DP = 1 there is nothing to shard: the flag then
    gives the plain AdamW, bit for bit."""
    named = list(model.named_parameters())
    if getattr(args, "use_distributed_optimizer", False) and ps is not None and ps.dp_size > 1:
        from goldtron.training.distributed_optimizer import DistributedOptimizer
        return DistributedOptimizer(model, args, ps, lambda owned: _adamw(owned, args))
    return _adamw([(name, param, param) for name, param in named], args)


def _adamw(entries, args: Namespace) -> torch.optim.AdamW:
    """entries: (parameter name, parameter, the tensor AdamW updates: the parameter or a piece of it)."""
    decay, plain = [], []
    for name, param, target in entries:
        (plain if no_weight_decay(name, param) else decay).append(target)
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": plain, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                             foreach=False)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
