"""Point-to-point transfers between neighbouring pipeline stages.

Every transfer of one schedule slot is posted at once (non-blocking sends and receives) and then
waited for, as Megatron's batched p2p does: two stages that send to each other in the same slot
(activations one way, gradients the other) cannot deadlock.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from goldtron.parallel.state import ParallelState


class PipelineP2P:
    def __init__(self, ps: ParallelState, activation_shape: tuple[int, ...], dtype: torch.dtype):
        self.ps = ps
        self.shape = activation_shape
        self.dtype = dtype

    def exchange(self, send_next: torch.Tensor | None = None, send_prev: torch.Tensor | None = None,
                 recv_prev: bool = False, recv_next: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Send/receive in one batch; returns (tensor from prev stage, tensor from next stage)."""
        ps = self.ps
        ops, from_prev, from_next = [], None, None
        if recv_prev and not ps.is_first_stage:
            from_prev = torch.empty(self.shape, dtype=self.dtype, device=ps.device)
            ops.append(dist.P2POp(dist.irecv, from_prev, ps.prev_stage_rank))
        if send_next is not None and not ps.is_last_stage:
            ops.append(dist.P2POp(dist.isend, send_next.contiguous(), ps.next_stage_rank))
        if send_prev is not None and not ps.is_first_stage:
            ops.append(dist.P2POp(dist.isend, send_prev.contiguous(), ps.prev_stage_rank))
        if recv_next and not ps.is_last_stage:
            from_next = torch.empty(self.shape, dtype=self.dtype, device=ps.device)
            ops.append(dist.P2POp(dist.irecv, from_next, ps.next_stage_rank))
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()
        return from_prev, from_next
