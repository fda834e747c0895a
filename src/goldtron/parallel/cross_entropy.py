"""Cross-entropy over vocabulary-parallel logits: no rank ever holds the full logits.

Each rank has logits for its own vocabulary slice. The softmax needs three numbers per token
from all ranks (max, sum of exp, the target's logit), each one all-reduce over TP. Backward is
softmax - onehot on the local slice, computed from what forward kept.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import BackendRelease, all_reduce_


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, vocab_start: int, group, release):
        logits = logits.float()
        if logits.shape[-1] == 0:
            # A tiny vocabulary over a large TP leaves some ranks only padding: no real logits.
            local_max = logits.new_full(logits.shape[:-1], float("-inf"))
        else:
            local_max = logits.amax(dim=-1)
        # Subtract the global max for a stable exp (all ranks must subtract the same number).
        logits_max = all_reduce_(local_max, group, release, op=dist.ReduceOp.MAX)
        shifted = logits - logits_max.unsqueeze(-1)

        local_target = target - vocab_start
        outside = (local_target < 0) | (local_target >= logits.shape[-1])
        local_target = local_target.masked_fill(outside, 0)
        if logits.shape[-1] == 0:
            target_logit = local_max.new_zeros(local_max.shape)
        else:
            target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)

        exp = shifted.exp_()  # in place: `shifted` is ours and no longer needed as logits
        sum_exp = exp.sum(dim=-1)
        # One collective for both sums (gloo latency dominates small messages).
        both = all_reduce_(torch.stack([target_logit, sum_exp]), group, release)
        target_logit, sum_exp = both[0], both[1]
        loss = sum_exp.log() - target_logit

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax  # reused in place: each backward runs once per forward
        if grad.shape[-1] > 0:
            inside = (~outside).to(grad.dtype)
            grad.scatter_add_(-1, local_target.unsqueeze(-1), -inside.unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, vocab_start: int, group,
                                 release: BackendRelease) -> torch.Tensor:
    """Per-token loss (fp32) for logits [..., V_local] holding vocabulary ids [vocab_start, +V_local)."""
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, group, release)
