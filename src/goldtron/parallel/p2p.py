"""Point-to-point transfers between neighbouring pipeline ranks.

Every transfer of one schedule slot is posted at once (non-blocking sends and receives) and then
waited for, as Megatron's batched p2p does: two ranks that send to each other in the same slot
(activations one way, gradients the other) cannot deadlock.

The ranks form a ring (rank PP-1's next rank is rank 0): with an interleaved schedule the output
of chunk c on the last rank is the input of chunk c+1 on the first. The caller (the schedule's
plan) says what to send and receive; nothing is skipped here. Activations and gradients travel
under different tags, so with PP 2 (where the next and the previous rank are the same rank) the
two streams cannot be mistaken for each other whatever their interleaving (gloo matches by tag;
NCCL ignores tags and matches in order, which the plans keep: tests/unit/test_schedule_plan.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from goldtron.parallel.state import ParallelState

ACTIVATION_TAG = 1
GRADIENT_TAG = 2


class PipelineP2P:
    def __init__(self, ps: ParallelState, activation_shape: tuple[int, ...], dtype: torch.dtype):
        self.ps = ps
        self.shape = activation_shape
        self.dtype = dtype

    def exchange(self, send_next: torch.Tensor | None = None, send_prev: torch.Tensor | None = None,
                 recv_prev: bool = False, recv_next: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Send/receive in one batch; returns (activation from the previous rank, gradient from the next)."""
        ps = self.ps
        ops, from_prev, from_next = [], None, None
        prev_rank, next_rank = ps.prev_stage_rank, ps.next_stage_rank
        if recv_prev:
            from_prev = torch.empty(self.shape, dtype=self.dtype, device=ps.device)
            ops.append(dist.P2POp(dist.irecv, from_prev, prev_rank, tag=ACTIVATION_TAG))
        if send_next is not None:
            ops.append(dist.P2POp(dist.isend, send_next.contiguous(), next_rank, tag=ACTIVATION_TAG))
        if send_prev is not None:
            ops.append(dist.P2POp(dist.isend, send_prev.contiguous(), prev_rank, tag=GRADIENT_TAG))
        if recv_next:
            from_next = torch.empty(self.shape, dtype=self.dtype, device=ps.device)
            ops.append(dist.P2POp(dist.irecv, from_next, next_rank, tag=GRADIENT_TAG))
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()
        return from_prev, from_next
