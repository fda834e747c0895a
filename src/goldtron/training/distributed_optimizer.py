"""--use-distributed-optimizer (Megatron's ZeRO-1): Adam state sharded over the data-parallel ranks.

Each stage's parameters are laid out in flat fp32 buckets; a bucket is split into DP equal
contiguous ranges and each DP rank owns one. A step:
  1. reduce_gradients: copy the local gradients into the flat bucket, reduce-scatter it over DP
     (each rank receives the summed gradient of its range only), divide by DP (the mean, as the
     plain path), and for the tied embedding add the embedding-group sum on the owned range;
  2. the loop measures grad-norm / num-zeros over the owned ranges, summed over all ranks
     (DP x TP x PP), with the same counting rules as the plain path (grads.is_counted);
  3. step: Adam on the owned pieces only (views of the live parameters), then an all-gather of
     the updated ranges gives every rank the whole parameters again.

Why it is bitwise the plain optimizer at DP2: fp32 a+b is commutative, so the reduce-scatter sum
equals the all-reduce sum; Adam is elementwise, and every range boundary sits at a multiple of
ALIGNMENT elements from its parameter's start, so a piece sees the same vectorised/scalar-tail
split of the CPU kernels as the whole tensor. Norms are float64 sums in another order (pieces,
then over all ranks): equal to ~1e-16 relative, not bitwise. With DP > 2 the reduction order of
the collective may differ from the all-reduce's: equal to fp32 rounding.

The tied embedding (PP > 1) has a bucket of its own: the first stage's weight and the last
stage's copy then have the same owned ranges, so the embedding-group all-reduce works on ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import all_gather_flat_, all_reduce_, reduce_scatter_
from goldtron.parallel.state import ParallelState
from goldtron.training import grads
from goldtron.training.optimizer import HeldAdamState

# Elements; a multiple of every CPU/GPU vector width, so pieces keep the kernels' element grouping.
ALIGNMENT = 128


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class OwnedPiece:
    """The part [start, end) (flat local indices) of `param` this rank updates."""

    param: torch.nn.Parameter
    start: int
    end: int
    shard_offset: int    # where the piece starts in the bucket's owned gradient shard
    view: torch.Tensor   # param's elements [start, end): the leaf the inner AdamW updates in place


class Bucket:
    def __init__(self, params: list[torch.nn.Parameter], dp_size: int, dp_rank: int, reduce_over_embedding: bool):
        self.params = params
        self.offsets, offset = [], 0
        for p in params:
            self.offsets.append(offset)
            offset = _round_up(offset + p.numel(), ALIGNMENT)
        self.size = _round_up(max(offset, 1), ALIGNMENT * dp_size)
        self.shard_size = self.size // dp_size
        low, high = dp_rank * self.shard_size, (dp_rank + 1) * self.shard_size
        self.reduce_over_embedding = reduce_over_embedding
        self.pieces: list[OwnedPiece] = []
        for p, at in zip(params, self.offsets):
            start, end = max(low, at), min(high, at + p.numel())
            if start < end:
                view = p.detach().view(-1)[start - at : end - at]
                self.pieces.append(OwnedPiece(p, start - at, end - at, start - low, view))
        self.grad_shard: torch.Tensor | None = None


class DistributedOptimizer:
    """The optimizer (training/optimizer.py's interface) when --use-distributed-optimizer and
    DP > 1 (with DP = 1 build_optimizer returns the replicated one: nothing to shard)."""

    def __init__(self, model: torch.nn.Module, args, ps: ParallelState, make_adamw):
        self.ps = ps
        shared = model.shared_embedding_weight()
        rest = [p for p in model.parameters() if p is not shared]
        self.buckets = [Bucket(rest, ps.dp_size, ps.dp_rank, False)]
        if shared is not None:
            self.buckets.insert(0, Bucket([shared], ps.dp_size, ps.dp_rank, True))
        self.pieces = {id(piece.param): piece for b in self.buckets for piece in b.pieces}
        for piece in self.pieces.values():
            if piece.param.dim() > 2:
                raise NotImplementedError("the distributed optimizer's checkpoint pieces handle 1-D and 2-D tensors")
        names = {id(p): n for n, p in model.named_parameters()}
        owned = [(names[id(piece.param)], piece.param, piece.view) for piece in self.pieces.values()]
        # The inner AdamW sees only the owned pieces: its state is the rank's 1/DP of Adam's.
        self.inner = make_adamw(owned) if owned else None
        # Norms and num-zeros: every rank holds a disjoint part of each replica's gradients.
        self.norm_group = dist.group.WORLD if ps.world_size > 1 else None

    # ---- the interface's state: what set_learning_rate and the checkpointer read ----------------
    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups if self.inner is not None else []

    @property
    def state(self):
        return self.inner.state if self.inner is not None else {}

    def held_state(self, param: torch.nn.Parameter) -> HeldAdamState | None:
        """The Adam state of `param`'s owned flat range (None: this rank owns none of it, or no step yet)."""
        piece = self.pieces.get(id(param))
        adam = self.state.get(piece.view) if piece is not None else None
        return HeldAdamState(adam, (piece.start, piece.end)) if adam else None

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            for p in bucket.params:
                p.grad = None
            bucket.grad_shard = None
        for piece in self.pieces.values():
            piece.view.grad = None

    # ---- gradients -----------------------------------------------------------------------------
    def reduce_gradients(self) -> None:
        ps = self.ps
        for bucket in self.buckets:
            flat = torch.zeros(bucket.size, dtype=torch.float32, device=ps.device)
            for p, at in zip(bucket.params, bucket.offsets):
                if p.grad is not None:
                    flat[at : at + p.numel()].copy_(p.grad.view(-1))
                p.grad = None  # the owned sums live in grad_shard; the rest is another rank's
            shard = torch.empty(bucket.shard_size, dtype=torch.float32, device=ps.device)
            reduce_scatter_(shard, flat, ps.dp_group, ps.backend_release)
            del flat
            shard.div_(ps.dp_size)
            if bucket.reduce_over_embedding:
                all_reduce_(shard, ps.embedding_group, ps.backend_release)
            bucket.grad_shard = shard
            for piece in bucket.pieces:
                piece.view.grad = shard[piece.shard_offset : piece.shard_offset + piece.end - piece.start]

    def counted_views(self, use_grad: bool) -> list[torch.Tensor]:
        """The owned pieces that count in norms and num-zeros (grads.is_counted), real rows only."""
        out = []
        for piece in self.pieces.values():
            p = piece.param
            if not grads.is_counted(p, self.ps):
                continue
            t = piece.view.grad if use_grad else piece.view
            real = getattr(p, "real_rows", None)
            if real is not None:
                real_end = real * (p.numel() // p.shape[0])
                t = t[: max(0, min(piece.end, real_end) - piece.start)]
            out.append(t)
        return out

    def gradients(self) -> list[torch.Tensor]:
        """What clipping scales: the owned gradient shards."""
        return [b.grad_shard for b in self.buckets if b.grad_shard is not None]

    # ---- update ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        if self.inner is not None:
            self.inner.step()
        ps = self.ps
        for bucket in self.buckets:
            shard = torch.zeros(bucket.shard_size, dtype=torch.float32, device=ps.device)
            for piece in bucket.pieces:
                shard[piece.shard_offset : piece.shard_offset + piece.end - piece.start].copy_(piece.view)
            full = torch.empty(bucket.size, dtype=torch.float32, device=ps.device)
            all_gather_flat_(full, shard, ps.dp_group, ps.backend_release)
            del shard
            for p, at in zip(bucket.params, bucket.offsets):
                p.detach().view(-1).copy_(full[at : at + p.numel()])
