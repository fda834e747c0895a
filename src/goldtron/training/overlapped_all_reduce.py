"""--overlap-grad-reduce for the replicated optimizer: each bucket's DP all-reduce starts, on the
backend's thread, as soon as backward has made its gradients final (grad_readiness.py), and
`finish` waits for them all before the norms and the optimizer.

Bitwise the non-overlapped reduction (grads.reduce_gradients) at DP2: an all-reduce sums each
element over the ranks whatever buffer it travels in (fp32 a + b = b + a), and the mean is the
same division after it. With DP > 2 gloo's reduction order per element can depend on the buffer's
size, so results equal to fp32 rounding.
"""

from __future__ import annotations

from argparse import Namespace
from functools import partial

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import PendingCollective
from goldtron.parallel.state import ParallelState
from goldtron.training.grad_buckets import bucket_parameters, resolve_bucket_size
from goldtron.training.grad_readiness import GradReadiness


class OverlappedAllReduce:
    def __init__(self, model: torch.nn.Module, args: Namespace, ps: ParallelState, average: bool):
        self.ps = ps
        self.average = average  # divide by DP (not with --calculate-per-token-loss)
        params = list(model.parameters())
        size = resolve_bucket_size(args, ps.dp_cp_size, ps.pp_rank, sum(p.numel() for p in params))
        self.buckets = bucket_parameters(params, size)
        self.pending: dict[int, PendingCollective] = {}
        # --no-align-grad-reduce: later stages too launch from backward (Megatron: with the default,
        # only the first stage does; the others launch after their last backward).
        from_backward = ps.pp_rank == 0 or not args.align_grad_reduce
        self.readiness = GradReadiness(model, self.buckets, args.num_micro_batches, self._launch, from_backward)

    def reset(self) -> None:
        self.readiness.reset()
        self.pending.clear()

    def _launch(self, b: int) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.buckets[b]]
        all_reduce = partial(dist.all_reduce, group=self.ps.dp_cp_group, async_op=True)
        self.pending[b] = PendingCollective(all_reduce, [torch.cat([g.reshape(-1) for g in grads])],
                                            self.ps.backend_release)

    def finish(self) -> None:
        """Launch what backward did not, wait for every bucket, and write the sums (means) back."""
        self.readiness.launch_remaining()
        for b, params in enumerate(self.buckets):
            (flat,) = self.pending.pop(b).wait()
            offset = 0
            for p in params:
                n = p.numel()
                summed = flat[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = summed.clone()
                else:
                    p.grad.copy_(summed)
                if self.average:
                    p.grad.div_(self.ps.dp_cp_size)
                offset += n
