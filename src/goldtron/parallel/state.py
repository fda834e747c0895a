"""Process groups for tensor, pipeline and data parallelism, held in one explicit object.

Rank order follows Megatron's default "tp-dp-pp" (tp fastest, then dp, then pp):
    global_rank = tp_rank + tp_size * (dp_rank + dp_size * pp_rank)
so the ranks of one tensor-parallel group are neighbours (cheapest links on a node). With
--use-tp-pp-dp-mapping it is Megatron's "tp-pp-dp" (pipeline before data parallel):
    global_rank = tp_rank + tp_size * (pp_rank + pp_size * dp_rank)
The groups are the same sets of coordinates either way; which processes they hold differs.

Every rank must create every group in the same order (torch.distributed's rule), so
`ParallelState.create` builds all of them on all ranks and keeps only those it belongs to.
Nothing here is a module global: the object is passed to whoever needs a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import BackendRelease


@dataclass
class ParallelState:
    world_size: int
    rank: int
    tp_size: int
    pp_size: int
    dp_size: int
    device: torch.device
    backend: str
    tp_pp_dp_mapping: bool = False  # the rank order: tp-pp-dp instead of tp-dp-pp
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    # tensor x pipeline ranks of one model replica: norms and num-zeros are summed over it.
    model_parallel_group: dist.ProcessGroup | None = None
    # first and last pipeline stage of this pipeline (same tp/dp rank): tied embedding grads.
    embedding_group: dist.ProcessGroup | None = None
    pp_ranks: list[int] = field(default_factory=list)
    dp_ranks: list[int] = field(default_factory=list)  # this rank's data-parallel group, replica order
    embedding_ranks: list[int] = field(default_factory=list)
    # Passed to every collective: whether it waits for the backend to let go of its tensors.
    backend_release: BackendRelease = field(default_factory=BackendRelease, compare=False, repr=False)

    # ---- coordinates -------------------------------------------------------------------
    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        if self.tp_pp_dp_mapping:
            return self.rank // (self.tp_size * self.pp_size)
        return (self.rank // self.tp_size) % self.dp_size

    @property
    def pp_rank(self) -> int:
        if self.tp_pp_dp_mapping:
            return (self.rank // self.tp_size) % self.pp_size
        return self.rank // (self.tp_size * self.dp_size)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    # The pipeline ranks form a ring (an interleaved schedule sends chunk c's output on the last
    # rank on to chunk c+1 on the first): rank 0's previous rank is the last, and the reverse.
    @property
    def prev_stage_rank(self) -> int:
        return self.pp_ranks[(self.pp_rank - 1) % self.pp_size]

    @property
    def next_stage_rank(self) -> int:
        return self.pp_ranks[(self.pp_rank + 1) % self.pp_size]

    @property
    def in_embedding_group(self) -> bool:
        return self.rank in self.embedding_ranks

    @property
    def is_logging_rank(self) -> bool:
        """Megatron writes TensorBoard from the last rank (a last-stage rank)."""
        return self.rank == self.world_size - 1

    # ---- construction ------------------------------------------------------------------
    @staticmethod
    def global_rank(tp_rank: int, dp_rank: int, pp_rank: int, tp_size: int, dp_size: int, pp_size: int = 1,
                    tp_pp_dp_mapping: bool = False) -> int:
        if tp_pp_dp_mapping:
            return tp_rank + tp_size * (pp_rank + pp_size * dp_rank)
        return tp_rank + tp_size * (dp_rank + dp_size * pp_rank)

    @classmethod
    def create(cls, tp_size: int, pp_size: int, device: torch.device, backend: str,
               tp_pp_dp_mapping: bool = False) -> "ParallelState":
        """Build all groups. `torch.distributed` must already be initialised. `tp_pp_dp_mapping`:
        Megatron's --use-tp-pp-dp-mapping rank order."""
        world_size = dist.get_world_size()
        rank = dist.get_rank()
        if world_size % (tp_size * pp_size) != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor-model-parallel-size {tp_size} "
                f"x pipeline-model-parallel-size {pp_size}"
            )
        dp_size = world_size // (tp_size * pp_size)
        state = cls(world_size, rank, tp_size, pp_size, dp_size, device, backend, tp_pp_dp_mapping)
        groups = group_rank_lists(tp_size, pp_size, dp_size, tp_pp_dp_mapping)
        state.tp_group, _ = _create_groups(groups["tp"], rank)
        state.dp_group, state.dp_ranks = _create_groups(groups["dp"], rank)
        for ranks in groups["pp"]:  # each pipeline's embedding group is made right after it
            group = _new_group(ranks)
            if rank in ranks:
                state.pp_group, state.pp_ranks = group, ranks
            embedding = [ranks[0], ranks[-1]] if pp_size > 1 else [ranks[0]]
            egroup = _new_group(embedding)
            if rank in embedding:
                state.embedding_group, state.embedding_ranks = egroup, embedding
        state.model_parallel_group, _ = _create_groups(groups["model_parallel"], rank)
        return state


def group_rank_lists(tp_size: int, pp_size: int, dp_size: int, tp_pp_dp_mapping: bool = False) -> dict[str, list[list[int]]]:
    """Every group's global ranks, by kind ("tp", "dp", "pp", "model_parallel"), in the order all
    ranks create them. Pure: the rank order alone decides which processes share a group."""
    def g(t: int, d: int, p: int) -> int:
        return ParallelState.global_rank(t, d, p, tp_size, dp_size, pp_size, tp_pp_dp_mapping)

    return {
        "tp": [[g(t, d, p) for t in range(tp_size)] for p in range(pp_size) for d in range(dp_size)],
        "dp": [[g(t, d, p) for d in range(dp_size)] for p in range(pp_size) for t in range(tp_size)],
        "pp": [[g(t, d, p) for p in range(pp_size)] for d in range(dp_size) for t in range(tp_size)],
        "model_parallel": [sorted(g(t, d, p) for p in range(pp_size) for t in range(tp_size))
                           for d in range(dp_size)],
    }


def _create_groups(rank_lists: list[list[int]], rank: int) -> tuple[dist.ProcessGroup | None, list[int]]:
    """Create every group of one kind (all ranks, same order); return this rank's and its ranks."""
    mine: tuple[dist.ProcessGroup | None, list[int]] = (None, [])
    for ranks in rank_lists:
        group = _new_group(ranks)
        if rank in ranks:
            mine = (group, ranks)
    return mine


def _new_group(ranks: list[int]) -> dist.ProcessGroup | None:
    """A group for `ranks`; None for a single rank (collectives on it are skipped)."""
    if len(ranks) == 1:
        # new_group must still be called collectively only when it creates something;
        # single-rank groups are never created, on any rank, so the call order stays aligned.
        return None
    return dist.new_group(ranks)
