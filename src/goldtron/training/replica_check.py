"""--check-weight-hash-across-dp-replicas-interval: do the data-parallel replicas hold the same weights?

As Megatron's check_param_hashes_across_dp_replicas: a SHA-256 of each local parameter's bytes,
all-gathered over the data-parallel group and compared with replica 0's. Replicas must agree bit
for bit (they apply the same reduced gradients), so any difference is a fault: a rank that skipped
a reduction, an optimizer shard not gathered back, a corrupted copy. Every rank learns the verdict
(one flag summed over the world), so a mismatch stops the job everywhere instead of hanging it.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import all_gather_, all_reduce_


class ReplicaMismatchError(RuntimeError):
    """The data-parallel replicas' weights differ; the message names the parameters and ranks."""


def _digest(tensor: torch.Tensor) -> torch.Tensor:
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return torch.frombuffer(bytearray(hashlib.sha256(raw).digest()), dtype=torch.uint8)


def check_weight_hashes_across_dp_replicas(named_parameters, ps, iteration: int) -> None:
    """Raise ReplicaMismatchError on every rank if any replica's weights differ from replica 0's."""
    names, digests = [], []
    for name, param in named_parameters:
        names.append(name)
        digests.append(_digest(param))
    local = torch.stack(digests).to(ps.device)
    mismatched: list[str] = []
    if ps.dp_size > 1:
        replicas = all_gather_([torch.empty_like(local) for _ in range(ps.dp_size)], local, ps.dp_group,
                               ps.backend_release)
        different = (replicas[ps.dp_rank] != replicas[0]).any(dim=1).tolist()
        mismatched = [name for name, differs in zip(names, different) if differs]
    count = torch.tensor([len(mismatched)], dtype=torch.int64, device=ps.device)
    if ps.world_size > 1:
        all_reduce_(count, dist.group.WORLD, ps.backend_release)
    if int(count.item()) == 0:
        return
    if mismatched:
        shown = ", ".join(mismatched[:5]) + (f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else "")
        where = (f"rank {ps.rank} (data-parallel replica {ps.dp_rank}) holds other weights than rank "
                 f"{ps.dp_ranks[0]} (replica 0) in {len(mismatched)} parameter(s): {shown}")
    else:
        where = "another rank's replica differs from its replica 0 (its own message names the parameters)"
    raise ReplicaMismatchError(
        f"--check-weight-hash-across-dp-replicas-interval: after iteration {iteration} the data-parallel replicas "
        f"do not hold the same weights: {where}. Replicas apply the same reduced gradients, so this is a fault "
        "in the gradient reduction or the optimizer (Megatron: 'Parameter hashes not matching across DP replicas').")
