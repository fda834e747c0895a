"""After the last backward of a step: make gradients final, then measure and clip them.

Order as Megatron: DP all-reduce (mean; over DP x CP under context parallelism), then the embedding-group all-reduce (the tied word
embedding and its last-stage copy get the summed gradient), then the global norm and clipping.

What counts in norms and num-zeros (each element exactly once across the model-parallel group):
- TP-sharded tensors on every TP rank; TP-replicated tensors (LayerNorms, row-parallel biases,
  position embeddings) only on TP rank 0;
- the last stage's copy of the tied embedding never (the first stage counts it);
- vocab-sharded weights over their real rows only (padding is not part of the model).
"""

from __future__ import annotations

import math

import torch

from goldtron.parallel.collectives import all_reduce_, all_reduce_flat_
from goldtron.parallel.state import ParallelState


def is_counted(p: torch.nn.Parameter, ps: ParallelState) -> bool:
    """Whether this rank counts `p` in norms and num-zeros (the rules above)."""
    if getattr(p, "is_embedding_copy", False):
        return False
    return p.tensor_parallel_dim is not None or ps.tp_rank == 0


def counted_views(params: list[torch.nn.Parameter], ps: ParallelState, use_grad: bool) -> list[torch.Tensor]:
    out = []
    for p in params:
        if not is_counted(p, ps):
            continue
        t = p.grad if use_grad else p.detach()
        if t is None:
            continue
        real = getattr(p, "real_rows", None)
        out.append(t if real is None else t[:real])
    return out


def reduce_gradients(params: list[torch.nn.Parameter], ps: ParallelState, shared_embedding, average: bool = True,
                     dp_reduce=None) -> None:
    """DP (x CP) all-reduce (the mean, or the sum when not `average`: --calculate-per-token-loss divides by
    the step's tokens instead), then the embedding group's. `dp_reduce`: an OverlappedAllReduce
    whose buckets are already under way (--overlap-grad-reduce), finished here instead."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if dp_reduce is not None:
        dp_reduce.finish()
    elif ps.dp_cp_size > 1:
        grads = [p.grad for p in params]
        all_reduce_flat_(grads, ps.dp_cp_group, ps.backend_release)
        if average:
            for g in grads:
                g.div_(ps.dp_cp_size)
    if shared_embedding is not None:
        all_reduce_(shared_embedding.grad, ps.embedding_group, ps.backend_release)


def step_token_count(micro_batches, ps: ParallelState) -> float:
    """--calculate-per-token-loss: the loss tokens of the whole step, summed over DP x CP. Every rank
    loads its micro-batches' loss masks, so no broadcast from the last stage is needed (Megatron's)."""
    local = sum(float(mb.loss_mask.sum()) for mb in micro_batches)
    total = torch.tensor([local], dtype=torch.float64, device=ps.device)
    all_reduce_(total, ps.dp_cp_group, ps.backend_release)
    return float(total)


def scale_gradients_(gradients: list[torch.Tensor], factor: float) -> None:
    for g in gradients:
        g.mul_(factor)


def global_norm(views: list[torch.Tensor], ps: ParallelState, group=None) -> float:
    """L2 norm over `views` summed over `group` (default: this replica's model-parallel ranks)."""
    local = torch.zeros(1, dtype=torch.float64, device=ps.device)
    for v in views:
        # float64 accumulation: the layout changes the summation order, and fp32 would show it.
        local += torch.linalg.vector_norm(v, 2, dtype=torch.float64) ** 2
    all_reduce_(local, group or ps.model_parallel_group, ps.backend_release)
    return math.sqrt(float(local))


def count_zeros(views: list[torch.Tensor], ps: ParallelState, group=None) -> int:
    local = torch.zeros(1, dtype=torch.float64, device=ps.device)
    for v in views:
        local += (v == 0).sum()
    all_reduce_(local, group or ps.model_parallel_group, ps.backend_release)
    return int(local)


def clip_gradients_(gradients: list[torch.Tensor], grad_norm: float, max_norm: float) -> None:
    if max_norm <= 0:
        return
    coeff = max_norm / (grad_norm + 1.0e-6)
    if coeff < 1.0:
        for g in gradients:
            g.mul_(coeff)
