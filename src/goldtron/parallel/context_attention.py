"""Causal core attention when the sequence is split over a context-parallel group (`--cp-comm-type`).

Each CP rank holds the queries, keys and values of its own positions (parallel/context_parallel.py:
two of the 2 x CP chunks). A query must see every earlier key of the whole sequence, so keys and
values have to travel; Megatron (through Transformer Engine) offers four ways, all kept here:

- `p2p`: a ring. Every rank passes the keys/values it holds to the next CP rank and takes the
  previous one's, CP - 1 times, attending to each block as it comes. The blocks' partial results are
  merged with the online softmax: each block gives its output normalised over its own keys and
  the log of its softmax denominator (log-sum-exp); two partial results combine as
  out = out_1 e^(lse_1 - lse) + out_2 e^(lse_2 - lse) with lse = log(e^lse_1 + e^lse_2).
  Backward runs the ring again: each rank recomputes its queries' probabilities against each block
  from the saved log-sum-exp, and the block's key/value gradients travel on with it, arriving back
  at the block's own rank after a full turn. Only q, k, v, the output and the log-sum-exp are
  kept for backward, never a [s, s] probability matrix.
- `a2a` (DeepSpeed-Ulysses): an all-to-all turns "my positions, all heads" into "all positions,
  my share of the heads" (heads / CP per rank), plain causal attention runs over the whole
  sequence, and a second all-to-all turns the output back.
- `allgather` (Transformer Engine's `all_gather`): the keys and values of every rank are
  all-gathered, and each rank attends with its own queries; backward reduce-scatters their gradients.
- `a2a+p2p` with `--hierarchical-context-parallel-sizes [a, b]`: the all-to-all within the
  level-0 groups of a ranks, then the ring over the level-1 groups of b.

Which key a query may see is decided from their sequence positions (q_pos >= k_pos), never from
where they sit in a buffer, so the load-balanced chunk order and the all-to-all's concatenation
need no reordering. Scores and the softmax are computed in fp32 (Megatron's
--attention-softmax-in-fp32); with --apply-query-key-layer-scaling the scale is 1/sqrt(d) x L / L,
which changes nothing but one rounding (model/qk_scaling.py). Attention dropout is not available
under CP (validation refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from goldtron.model.qkv_layout import expand_key_value
from goldtron.parallel.collectives import BackendRelease, all_to_all_flat_
from goldtron.parallel.context_parallel import rank_positions
from goldtron.parallel.sequence_parallel import gather_from_sequence_parallel
from goldtron.parallel.state import ParallelState, hierarchical_group_rank_lists

KEY_VALUE_TAG = 3       # the ring's keys/values (pipeline transfers use tags 1 and 2)
KEY_VALUE_GRAD_TAG = 4  # the ring's key/value gradients, travelling beside them in backward


# ---- the block math -------------------------------------------------------------------------
def visible(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """[sq, sk] True where the query may attend to the key (causal: not a later position)."""
    return q_positions[:, None] >= k_positions[None, :]


def _scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return scores.masked_fill(~mask, float("-inf"))


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """The log-sum-exp with rows that see no key (-inf) set to 0, so exp(scores - it) is 0 there."""
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def block_attention(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: fp32 output normalised over this block's visible keys [b, h, sq, d], and the
    log-sum-exp of its scores [b, h, sq] (-inf for a query that sees none of them)."""
    scores = _scores(q, k, mask, scale)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - _finite(lse)[..., None])
    return torch.matmul(probs, v.float()), lse


def merge(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """The online-softmax combination of two partial results over disjoint sets of keys."""
    total = torch.logaddexp(lse, block_lse)
    # A row that has seen no key in either is -inf - -inf = nan here: it weighs nothing.
    old = torch.exp(lse - total).nan_to_num(0.0)[..., None]
    new = torch.exp(block_lse - total).nan_to_num(0.0)[..., None]
    return out * old + block_out * new, total


def _group_sum(grad: torch.Tensor, heads_per_group: int) -> torch.Tensor:
    """Gradient of expand_key_value: [b, heads, s, d] -> [b, groups, s, d], each group's heads summed."""
    if heads_per_group == 1:
        return grad
    b, heads, s, d = grad.shape
    return grad.view(b, heads // heads_per_group, heads_per_group, s, d).sum(2)


# ---- the ring ---------------------------------------------------------------------------------
class Ring:
    """The ranks of one ring (global ranks, in ring order) and this rank's place in it."""

    def __init__(self, ranks: list[int], rank: int):
        self.ranks = ranks
        self.index = ranks.index(rank)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def source(self, step: int) -> int:
        """Whose keys/values this rank holds at `step` (its ring index)."""
        return (self.index - step) % self.size

    def pass_on(self, tensors: list[torch.Tensor], tags: list[int]) -> list[torch.Tensor]:
        """Send each tensor to the next rank and receive the previous rank's in its place."""
        nxt, prev = self.ranks[(self.index + 1) % self.size], self.ranks[(self.index - 1) % self.size]
        received = [torch.empty_like(t) for t in tensors]
        ops = []
        for sent, got, tag in zip(tensors, received, tags):
            ops.append(dist.P2POp(dist.isend, sent, nxt, tag=tag))
            ops.append(dist.P2POp(dist.irecv, got, prev, tag=tag))
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return received


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring: Ring, masks, scale, heads_per_group):
        """`masks[j]`: which of ring rank j's keys each query may see (None: none of them)."""
        held = torch.stack([k, v]).contiguous()
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        for step in range(ring.size):
            mask = masks[ring.source(step)]
            if mask is not None:
                keys, values = expand_key_value(held[0], held[1], heads_per_group)
                out, lse = merge(out, lse, *block_attention(q, keys, values, mask, scale))
            if step < ring.size - 1:
                (held,) = ring.pass_on([held], [KEY_VALUE_TAG])
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.masks = ring, masks
        ctx.scale, ctx.heads_per_group = scale, heads_per_group
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        ring, scale, hpg = ctx.ring, ctx.scale, ctx.heads_per_group
        grad_out = grad_out.float()
        # dS = P (dP - D) with D = rowsum(dO * O): the softmax's backward without its [s, s] Jacobian.
        row_dot = (grad_out * out).sum(-1, keepdim=True)
        qf = q.float()
        grad_q = torch.zeros_like(qf)
        held = torch.stack([k, v]).contiguous()
        held_grad = torch.zeros(held.shape, dtype=torch.float32, device=held.device)
        for step in range(ring.size):
            mask = ctx.masks[ring.source(step)]
            if mask is not None:
                keys, values = expand_key_value(held[0], held[1], hpg)
                probs = torch.exp(_scores(q, keys, mask, scale) - _finite(lse)[..., None])
                grad_values = torch.matmul(probs.transpose(-1, -2), grad_out)
                grad_scores = probs * (torch.matmul(grad_out, values.float().transpose(-1, -2)) - row_dot)
                grad_q += torch.matmul(grad_scores, keys.float()) * scale
                grad_keys = torch.matmul(grad_scores.transpose(-1, -2), qf) * scale
                held_grad[0] += _group_sum(grad_keys, hpg)
                held_grad[1] += _group_sum(grad_values, hpg)
            if step < ring.size - 1:
                held, held_grad = ring.pass_on([held, held_grad], [KEY_VALUE_TAG, KEY_VALUE_GRAD_TAG])
            else:  # one more hop: the block's gradients go home, complete
                (held_grad,) = ring.pass_on([held_grad], [KEY_VALUE_GRAD_TAG])
        return grad_q.to(q.dtype), held_grad[0].to(k.dtype), held_grad[1].to(v.dtype), None, None, None, None


# ---- the all-to-all ---------------------------------------------------------------------------
def _all_to_all(x: torch.Tensor, group, release: BackendRelease, scatter_dim: int, gather_dim: int):
    size = dist.get_world_size(group)
    send = torch.stack(x.chunk(size, dim=scatter_dim)).contiguous()
    received = all_to_all_flat_(torch.empty_like(send), send, group, release)
    return torch.cat(received.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """Part j of `scatter_dim` to rank j; rank j's parts concatenated along `gather_dim` in rank
    order. Its backward is the same exchange the other way round."""

    @staticmethod
    def forward(ctx, x, group, release, scatter_dim, gather_dim):
        ctx.group, ctx.release, ctx.dims = group, release, (scatter_dim, gather_dim)
        return _all_to_all(x, group, release, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.group, ctx.release, gather_dim, scatter_dim), None, None, None, None


HEAD_DIM, SEQ_DIM = 1, 2  # q, k, v are [b, heads, s, d]


# ---- one layer's plan -------------------------------------------------------------------------
@dataclass
class _Plan:
    """Who exchanges with whom, and the causal masks, which depend only on the layout: made once."""
    a2a_group: object          # None: no all-to-all
    ring: Ring | None          # None: no ring (the keys are all here after the all-to-all or gather)
    gather_group: object       # allgather: the CP group
    # ring index -> [queries, keys] True where a query (its position after the all-to-all) may see a
    # key of that rank (after its all-to-all); None where it sees none. One entry without a ring.
    masks: list[torch.Tensor | None]

    @classmethod
    def of(cls, a2a_group, ring, gather_group, q_positions, block_positions) -> "_Plan":
        masks = [visible(q_positions, k_positions) for k_positions in block_positions]
        return cls(a2a_group, ring, gather_group, [mask if mask.any() else None for mask in masks])


def _plan(comm_type: str, ps: ParallelState, seq_length: int) -> _Plan:
    cp_ranks = ps.cp_ranks

    def positions_of(members: list[int]) -> torch.Tensor:
        positions = [rank_positions(seq_length, ps.cp_size, cp_ranks.index(m)) for m in members]
        return torch.cat(positions).to(ps.device)  # the masks are made beside the scores

    if comm_type in ("allgather", "all_gather"):
        return _Plan.of(None, None, ps.cp_group, positions_of([ps.rank]), [positions_of(cp_ranks)])
    if comm_type == "a2a":
        return _Plan.of(ps.cp_group, None, None, positions_of(cp_ranks), [positions_of(cp_ranks)])
    if comm_type == "p2p":
        ring = Ring(cp_ranks, ps.rank)
        return _Plan.of(None, ring, None, positions_of([ps.rank]), [positions_of([m]) for m in cp_ranks])
    # a2a+p2p: the level-0 groups all-to-all, the level-1 groups form the ring.
    a2a_lists, ring_lists = hierarchical_group_rank_lists([cp_ranks], ps.hierarchical_cp_sizes)

    def a2a_members(rank: int) -> list[int]:
        return next(members for members in a2a_lists if rank in members)

    ring_ranks = next(members for members in ring_lists if ps.rank in members)
    ring = Ring(ring_ranks, ps.rank)
    return _Plan.of(ps.hierarchical_cp_groups[0], ring, None, positions_of(a2a_members(ps.rank)),
                 [positions_of(a2a_members(m)) for m in ring_ranks])


class ContextParallelAttention:
    """The core attention of one layer under CP: (q [b, heads, s/CP, d], k, v [b, groups, s/CP, d])
    of this rank's positions -> its context [b, heads, s/CP, d]."""

    def __init__(self, comm_type: str, ps: ParallelState, seq_length: int, heads_per_group: int, scale: float):
        self.plan = _plan(comm_type, ps, seq_length)
        self.heads_per_group = heads_per_group
        self.scale = scale
        self.release = ps.backend_release
        self.a2a_size = 1 if self.plan.a2a_group is None else dist.get_world_size(self.plan.a2a_group)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        plan, hpg = self.plan, self.heads_per_group
        if plan.a2a_group is not None:
            if k.shape[HEAD_DIM] % self.a2a_size:
                # Fewer key/value groups than ranks: every rank's query heads get their own copy.
                k, v = expand_key_value(k, v, hpg)
                hpg = 1
            q, k, v = (_AllToAll.apply(t, plan.a2a_group, self.release, HEAD_DIM, SEQ_DIM) for t in (q, k, v))
        if plan.gather_group is not None:
            k, v = (self._gather_sequence(t) for t in (k, v))
        if plan.ring is not None and plan.ring.size > 1:
            context = _RingAttention.apply(q, k, v, plan.ring, plan.masks, self.scale, hpg)
        else:  # every query sees its own position, so the one mask is never None
            keys, values = expand_key_value(k, v, hpg)
            context = F.scaled_dot_product_attention(q, keys, values, attn_mask=plan.masks[0], scale=self.scale)
        if plan.a2a_group is not None:
            context = _AllToAll.apply(context, plan.a2a_group, self.release, SEQ_DIM, HEAD_DIM)
        return context

    def _gather_sequence(self, t: torch.Tensor) -> torch.Tensor:
        # gather_from_sequence_parallel gathers dim 1 (backward: reduce-scatter); here the sequence is dim 2.
        gathered = gather_from_sequence_parallel(t.transpose(1, 2).contiguous(), self.plan.gather_group, self.release)
        return gathered.transpose(1, 2)
