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

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import PendingCollective, all_gather_flat_, all_reduce_, reduce_scatter_
from goldtron.parallel.sequence_parallel import all_reduce_sequence_parallel_gradients, sequence_parallel_gradients
from goldtron.parallel.state import ParallelState
from goldtron.training import grads
from goldtron.training.grad_buckets import bucket_parameters, resolve_bucket_size
from goldtron.training.grad_readiness import GradReadiness
from goldtron.training.parameter_gather import OverlappedParameterGather
from goldtron.training.eager_torch import eager_step
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


def bucket_size_multiple(dp_size: int, pad_for_high_nccl_busbw: bool) -> int:
    """What a bucket's padded size is a multiple of: DP equal shards of whole ALIGNMENT blocks, and
    with --ddp-pad-buckets-for-high-nccl-busbw also 2^16 (Megatron: NCCL's bus bandwidth at large DP)."""
    multiple = ALIGNMENT * dp_size
    return math.lcm(multiple, 2**16) if pad_for_high_nccl_busbw else multiple


class Bucket:
    def __init__(self, params: list[torch.nn.Parameter], dp_size: int, dp_rank: int, reduce_over_embedding: bool,
                 size_multiple: int | None = None):
        self.params = params
        self.offsets, offset = [], 0
        for p in params:
            self.offsets.append(offset)
            offset = _round_up(offset + p.numel(), ALIGNMENT)
        self.size = _round_up(max(offset, 1), size_multiple or ALIGNMENT * dp_size)
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
        self.average = not args.calculate_per_token_loss  # per-token: the sum, divided by the step's tokens later
        shared = model.shared_embedding_weight()
        multiple = bucket_size_multiple(ps.dp_cp_size, args.ddp_pad_buckets_for_high_nccl_busbw)
        self.buckets = [Bucket(params, ps.dp_cp_size, ps.dp_cp_rank, shared is not None and params[0] is shared, multiple)
                        for params in self._bucket_members(model, args, ps, shared)]
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
        self.pending_reduces: dict[int, PendingCollective] = {}
        self.readiness = None  # --overlap-grad-reduce: reduce-scatters launched from backward
        if args.overlap_grad_reduce:
            from_backward = ps.pp_rank == 0 or not args.align_grad_reduce  # as overlapped_all_reduce.py
            self.readiness = GradReadiness(model, [b.params for b in self.buckets], args.num_micro_batches,
                                           self._launch_reduce, from_backward)
        self.parameter_gather = None  # --overlap-param-gather: all-gathers waited by the next forward
        if args.overlap_param_gather:
            self.parameter_gather = OverlappedParameterGather(model, [b.params for b in self.buckets],
                                                              self._launch_gather, self._receive_gather)

    @staticmethod
    def _bucket_members(model: torch.nn.Module, args, ps: ParallelState, shared) -> list[list[torch.nn.Parameter]]:
        """Without --overlap-grad-reduce: the tied embedding alone, then everything else in the model's
        order. With it: Megatron's buckets (grad_buckets.py), the tied embedding still alone."""
        params = list(model.parameters())
        if args.overlap_grad_reduce:
            local = sum(p.numel() for p in params)
            size = resolve_bucket_size(args, ps.dp_cp_size, ps.pp_rank, local)
            return bucket_parameters(params, size, alone=shared)
        rest = [p for p in params if p is not shared]
        return ([[shared]] if shared is not None else []) + [rest]

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
        if self.readiness is not None:
            self.readiness.reset()

    # ---- gradients -----------------------------------------------------------------------------
    def _flat_gradients(self, bucket: Bucket) -> torch.Tensor:
        flat = torch.zeros(bucket.size, dtype=torch.float32, device=self.ps.device)
        for p, at in zip(bucket.params, bucket.offsets):
            if p.grad is not None:
                flat[at : at + p.numel()].copy_(p.grad.view(-1))
            p.grad = None  # the owned sums live in grad_shard; the rest is another rank's
        return flat

    def _receive_shard(self, bucket: Bucket, shard: torch.Tensor) -> None:
        """The bucket's owned, DP-summed gradients: the mean (unless per-token), then the embedding group's sum."""
        ps = self.ps
        if self.average:
            shard.div_(ps.dp_cp_size)
        if bucket.reduce_over_embedding:
            all_reduce_(shard, ps.embedding_group, ps.backend_release)
        bucket.grad_shard = shard
        for piece in bucket.pieces:
            piece.view.grad = shard[piece.shard_offset : piece.shard_offset + piece.end - piece.start]

    def _launch_reduce(self, b: int) -> None:
        bucket, ps = self.buckets[b], self.ps
        reduce_scatter = partial(dist.reduce_scatter_single, group=ps.dp_cp_group, async_op=True)
        self.pending_reduces[b] = PendingCollective(
            reduce_scatter, [torch.empty(bucket.shard_size, dtype=torch.float32, device=ps.device),
                             self._flat_gradients(bucket)], ps.backend_release)

    def reduce_gradients(self) -> None:
        self._reduce_scatter_over_dp()
        # --sequence-parallel: the owned pieces of the parameters whose gradients are parts over TP.
        # The TP ranks of a DP rank lay their (same-shaped) parameters out alike: the same pieces.
        pieces = self.pieces.values()
        all_reduce_sequence_parallel_gradients(
            sequence_parallel_gradients([piece.param for piece in pieces], lambda p: self.pieces[id(p)].view.grad),
            self.ps.tp_group, self.ps.backend_release)

    def _reduce_scatter_over_dp(self) -> None:
        ps = self.ps
        if self.readiness is not None:  # --overlap-grad-reduce: most are under way already
            self.readiness.launch_remaining()
            for b, bucket in enumerate(self.buckets):
                shard, _ = self.pending_reduces.pop(b).wait()
                self._receive_shard(bucket, shard)
            return
        for bucket in self.buckets:
            flat = self._flat_gradients(bucket)
            shard = torch.empty(bucket.shard_size, dtype=torch.float32, device=ps.device)
            reduce_scatter_(shard, flat, ps.dp_cp_group, ps.backend_release)
            del flat
            self._receive_shard(bucket, shard)

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
            eager_step(self.inner)
        if self.parameter_gather is not None:  # gathered while the next forward runs
            self.parameter_gather.mark_stale()
            return
        ps = self.ps
        for bucket in self.buckets:
            shard = self._owned_shard(bucket)
            full = torch.empty(bucket.size, dtype=torch.float32, device=ps.device)
            all_gather_flat_(full, shard, ps.dp_cp_group, ps.backend_release)
            del shard
            self._write_parameters(bucket, full)

    def _owned_shard(self, bucket: Bucket) -> torch.Tensor:
        shard = torch.zeros(bucket.shard_size, dtype=torch.float32, device=self.ps.device)
        for piece in bucket.pieces:
            shard[piece.shard_offset : piece.shard_offset + piece.end - piece.start].copy_(piece.view)
        return shard

    @torch.no_grad()
    def _write_parameters(self, bucket: Bucket, full: torch.Tensor) -> None:
        for p, at in zip(bucket.params, bucket.offsets):
            p.detach().view(-1).copy_(full[at : at + p.numel()])

    def _launch_gather(self, b: int) -> PendingCollective:
        bucket, ps = self.buckets[b], self.ps
        all_gather = partial(dist.all_gather_single, group=ps.dp_cp_group, async_op=True)
        return PendingCollective(all_gather, [torch.empty(bucket.size, dtype=torch.float32, device=ps.device),
                                              self._owned_shard(bucket)], ps.backend_release)

    def _receive_gather(self, b: int, pending: PendingCollective) -> None:
        full, _ = pending.wait()
        self._write_parameters(self.buckets[b], full)

    def finish_parameter_sync(self) -> None:
        if self.parameter_gather is not None:
            self.parameter_gather.complete_all()
