"""Context-parallel core attention against one process's causal attention over the whole sequence
(run under torchrun, 4 gloo ranks): for every --cp-comm-type at CP2 and CP4 (a2a+p2p with [2, 2]),
with every head its own key/value group and with 2 groups (at CP4 a2a: fewer groups than ranks).

Every rank draws the same full q, k, v [b, heads, s, d] and output gradient from one seed, runs
torch's scaled_dot_product_attention over the whole sequence and its backward, then its own
positions (two of the 2 x CP chunks) through ContextParallelAttention and its backward, and
compares output, dq, dk and dv chunk by chunk: each chunk's boundary is where a query starts
seeing another rank's keys, so an error in the masks or in the ring's merge shows in some chunk.

Tolerance: 1e-6 relative to the largest magnitude. Both sides are fp32 and compute the same sums
in another order (blocks merged by the online softmax, gradients accumulated over the ring):
rounding, ~1e-7; a wrong mask or merge is O(1e-2) or more.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from goldtron.model.qkv_layout import expand_key_value
from goldtron.parallel.context_attention import ContextParallelAttention
from goldtron.parallel.context_parallel import rank_positions
from goldtron.parallel.state import ParallelState

RTOL = 1e-6
BATCH, HEADS, SEQ, HEAD_DIM = 2, 4, 32, 8
SCALE = HEAD_DIM ** -0.5
CASES = [(2, "p2p", None), (2, "a2a", None), (2, "allgather", None), (4, "p2p", None), (4, "a2a", None),
         (4, "all_gather", None), (4, "a2a+p2p", [2, 2])]


def full_attention(groups: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, generator=gen, requires_grad=True)
    k = torch.randn(BATCH, groups, SEQ, HEAD_DIM, generator=gen, requires_grad=True)
    v = torch.randn(BATCH, groups, SEQ, HEAD_DIM, generator=gen, requires_grad=True)
    grad_out = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, generator=gen)
    keys, values = expand_key_value(k, v, HEADS // groups)
    out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=SCALE)
    out.backward(grad_out)
    return q, k, v, grad_out, out


def check(cp: int, comm_type: str, hierarchy, groups: int, failures: list[str]) -> None:
    ps = ParallelState.create(1, 1, torch.device("cpu"), "gloo", cp_size=cp, hierarchical_cp_sizes=hierarchy)
    q, k, v, grad_out, out = full_attention(groups, seed=cp * 10 + groups)
    mine = rank_positions(SEQ, cp, ps.cp_rank)
    local = [t.detach()[:, :, mine].clone().requires_grad_(True) for t in (q, k, v)]
    attention = ContextParallelAttention(comm_type, ps, SEQ, HEADS // groups, SCALE)
    local_out = attention(*local)
    local_out.backward(grad_out[:, :, mine])
    chunk = SEQ // (2 * cp)
    pairs = {"output": (local_out, out), "dq": (local[0].grad, q.grad), "dk": (local[1].grad, k.grad),
             "dv": (local[2].grad, v.grad)}
    for what, (ours, whole) in pairs.items():
        expected = whole.detach()[:, :, mine]
        scale = float(expected.abs().max())
        for c in range(2):  # this rank's two chunks, each checked on its own
            part = slice(c * chunk, (c + 1) * chunk)
            err = float((ours.detach()[:, :, part] - expected[:, :, part]).abs().max()) / scale
            if not err <= RTOL:
                first = int(mine[c * chunk])
                failures.append(f"CP{cp} {comm_type} groups={groups} rank {dist.get_rank()} {what}, chunk at "
                                f"positions {first}..{first + chunk - 1}: relative error {err:.2e} > {RTOL}")


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    failures: list[str] = []
    for cp, comm_type, hierarchy in CASES:
        for groups in (HEADS, 2):
            check(cp, comm_type, hierarchy, groups, failures)
    dist.destroy_process_group()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"context-parallel attention matches ({len(CASES) * 2} configurations)")


if __name__ == "__main__":
    main()
