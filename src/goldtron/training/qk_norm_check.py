"""--test-mode: Megatron's real-time consistency test of the query/key layer norms.

Megatron-Core (`Attention.run_realtime_tests`, with `--qk-layernorm` only) all-gathers each
attention's q_layernorm and k_layernorm parameters over the data-parallel group, then over the
tensor-parallel group, and requires every rank's to equal its own exactly: they are replicated
(same initialisation, same reduced gradients), so a difference is silent corruption (memory, a
checkpoint load, the network). Without `--qk-layernorm` the test does nothing, as Megatron's.

Megatron runs it in every attention forward. The parameters do not change between the forwards of
one step, so goldtron checks once per step, after the forward and backward passes (the weights the
forwards used: with --overlap-param-gather they are complete only then), over the same groups.
The DP and TP groups of one pipeline stage hold the same layers, so the gathers match across ranks
whatever the stage; the verdict is then summed over every rank, so a discrepancy stops the job
everywhere instead of leaving the other stages waiting.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import all_gather_, all_reduce_

QK_NORM_NAMES = (".q_layernorm.", ".k_layernorm.")


class RealtimeTestError(RuntimeError):
    """Replicated query/key layer-norm parameters differ between ranks; the message names them."""


def qk_norm_parameters(named_parameters) -> list[tuple[str, torch.Tensor]]:
    return [(name, param) for name, param in named_parameters if any(part in name for part in QK_NORM_NAMES)]


def _first_discrepancy(names, local: torch.Tensor, sizes: list[int], gathered: list[torch.Tensor], kind: str,
                       own_rank: int) -> str | None:
    for other_rank, other in enumerate(gathered):
        if torch.equal(other, local):
            continue
        for name, mine, theirs in zip(names, local.split(sizes), other.split(sizes)):
            if not torch.equal(mine, theirs):
                return (f"{name} differs between {kind} ranks {other_rank} and {own_rank} "
                        f"(norm of the difference {float(torch.linalg.vector_norm(mine - theirs)):.3e})")
    return None


def check_qk_norms_agree(named_parameters, ps, iteration: int) -> None:
    """Raise RealtimeTestError on every rank if any rank's q/k layer-norm parameters differ from
    another's in its data-parallel or tensor-parallel group."""
    named = qk_norm_parameters(named_parameters)
    problem = None
    if named:
        names = [name for name, _ in named]
        sizes = [param.numel() for _, param in named]
        local = torch.cat([param.detach().reshape(-1) for _, param in named])
        for kind, group, size, own_rank in (("data-parallel", ps.dp_group, ps.dp_size, ps.dp_rank),
                                            ("tensor-parallel", ps.tp_group, ps.tp_size, ps.tp_rank)):
            if size == 1:
                continue  # a group of one has nothing to compare (its group object is None: every rank)
            # Both gathers run on every rank whatever the first found: the group's other ranks wait on them.
            gathered = all_gather_([torch.empty_like(local) for _ in range(size)], local, group, ps.backend_release)
            problem = problem or _first_discrepancy(names, local, sizes, gathered, kind, own_rank)
    count = torch.tensor([0 if problem is None else 1], dtype=torch.int64, device=ps.device)
    if ps.world_size > 1:
        all_reduce_(count, dist.group.WORLD, ps.backend_release)
    if int(count.item()) == 0:
        return
    where = problem or "another rank found a discrepancy in its group (its own message names the parameter)"
    raise RealtimeTestError(
        f"--test-mode: at iteration {iteration} the replicated query/key layer norms do not agree on rank "
        f"{ps.rank}: {where}. They start equal and apply the same reduced gradients, so this is corruption "
        "(memory, a checkpoint load, the network): resume from the last good checkpoint on other hardware.")
