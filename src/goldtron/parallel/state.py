"""Process groups for tensor, context, pipeline and data parallelism, held in one explicit object.

Rank order follows Megatron's default "tp-cp-dp-pp" (tp fastest, then cp, dp, pp):
    global_rank = tp_rank + tp_size * (cp_rank + cp_size * (dp_rank + dp_size * pp_rank))
so the ranks of one tensor-parallel group are neighbours (cheapest links on a node). With
--use-tp-pp-dp-mapping it is Megatron's "tp-cp-pp-dp" (pipeline before data parallel):
    global_rank = tp_rank + tp_size * (cp_rank + cp_size * (pp_rank + pp_size * dp_rank))
The groups are the same sets of coordinates either way; which processes they hold differs.

Context parallelism (--context-parallel-size) splits the sequence, not the weights: the CP ranks
of one data-parallel replica hold the same parameters, so gradients are reduced, and the
distributed optimizer shards, over the data-parallel x context-parallel group (`dp_cp_*`), as
Megatron's `get_data_parallel_group(with_context_parallel=True)`. The data-parallel group itself
(`dp_*`) is what the data loader splits samples over. --hierarchical-context-parallel-sizes [a, b]
splits each CP group into level-0 groups of a consecutive CP ranks and level-1 groups of every a-th
(Megatron's create_hierarchical_groups); a2a+p2p attention uses them.

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
    cp_size: int = 1
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    cp_group: dist.ProcessGroup | None = None
    cp_ranks: list[int] = field(default_factory=list)  # this rank's context-parallel group, CP-rank order
    # Data x context parallel: the ranks holding the same weights (gradient reduction, optimizer shards).
    dp_cp_group: dist.ProcessGroup | None = None
    # --hierarchical-context-parallel-sizes, and this rank's group at each level (the rank lists:
    # hierarchical_group_rank_lists).
    hierarchical_cp_sizes: list[int] = field(default_factory=list)
    hierarchical_cp_groups: list = field(default_factory=list)
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
    def cp_rank(self) -> int:
        return (self.rank // self.tp_size) % self.cp_size

    @property
    def dp_rank(self) -> int:
        inner = self.tp_size * self.cp_size
        if self.tp_pp_dp_mapping:
            return self.rank // (inner * self.pp_size)
        return (self.rank // inner) % self.dp_size

    @property
    def pp_rank(self) -> int:
        inner = self.tp_size * self.cp_size
        if self.tp_pp_dp_mapping:
            return (self.rank // inner) % self.pp_size
        return self.rank // (inner * self.dp_size)

    @property
    def dp_cp_size(self) -> int:
        return self.dp_size * self.cp_size

    @property
    def dp_cp_rank(self) -> int:
        """This rank's place in the data x context-parallel group (CP fastest, as its rank list)."""
        return self.cp_rank + self.cp_size * self.dp_rank

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
                    tp_pp_dp_mapping: bool = False, cp_rank: int = 0, cp_size: int = 1) -> int:
        inner = tp_rank + tp_size * cp_rank
        if tp_pp_dp_mapping:
            return inner + tp_size * cp_size * (pp_rank + pp_size * dp_rank)
        return inner + tp_size * cp_size * (dp_rank + dp_size * pp_rank)

    @classmethod
    def create(cls, tp_size: int, pp_size: int, device: torch.device, backend: str,
               tp_pp_dp_mapping: bool = False, cp_size: int = 1,
               hierarchical_cp_sizes: list[int] | None = None) -> "ParallelState":
        """Build all groups. `torch.distributed` must already be initialised. `tp_pp_dp_mapping`:
        Megatron's --use-tp-pp-dp-mapping rank order; `cp_size`, `hierarchical_cp_sizes`: Megatron's
        --context-parallel-size and --hierarchical-context-parallel-sizes."""
        world_size = dist.get_world_size()
        rank = dist.get_rank()
        if world_size % (tp_size * pp_size * cp_size) != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor-model-parallel-size {tp_size} "
                f"x pipeline-model-parallel-size {pp_size} x context-parallel-size {cp_size}"
            )
        dp_size = world_size // (tp_size * pp_size * cp_size)
        state = cls(world_size, rank, tp_size, pp_size, dp_size, device, backend, tp_pp_dp_mapping, cp_size)
        groups = group_rank_lists(tp_size, pp_size, dp_size, tp_pp_dp_mapping, cp_size)
        state.tp_group, _ = _create_groups(groups["tp"], rank)
        state.dp_group, state.dp_ranks = _create_groups(groups["dp"], rank)
        state.cp_group, state.cp_ranks = _create_groups(groups["cp"], rank)
        state.dp_cp_group = state.dp_group
        if cp_size > 1:
            state.dp_cp_group, _ = _create_groups(groups["dp_cp"], rank)
        state.hierarchical_cp_sizes = list(hierarchical_cp_sizes or [])
        for level_lists in hierarchical_group_rank_lists(groups["cp"], state.hierarchical_cp_sizes):
            group, _ = _create_groups(level_lists, rank)
            state.hierarchical_cp_groups.append(group)
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


def group_rank_lists(tp_size: int, pp_size: int, dp_size: int, tp_pp_dp_mapping: bool = False,
                     cp_size: int = 1) -> dict[str, list[list[int]]]:
    """Every group's global ranks, by kind ("tp", "cp", "dp", "dp_cp", "pp", "model_parallel"), in
    the order all ranks create them. Pure: the rank order alone decides which processes share a group."""
    def g(t: int, c: int, d: int, p: int) -> int:
        return ParallelState.global_rank(t, d, p, tp_size, dp_size, pp_size, tp_pp_dp_mapping, c, cp_size)

    T, C, D, P = range(tp_size), range(cp_size), range(dp_size), range(pp_size)
    return {
        "tp": [[g(t, c, d, p) for t in T] for p in P for d in D for c in C],
        "cp": [[g(t, c, d, p) for c in C] for p in P for d in D for t in T],
        "dp": [[g(t, c, d, p) for d in D] for p in P for c in C for t in T],
        "dp_cp": [[g(t, c, d, p) for d in D for c in C] for p in P for t in T],
        "pp": [[g(t, c, d, p) for p in P] for d in D for c in C for t in T],
        "model_parallel": [sorted(g(t, c, d, p) for p in P for t in T) for d in D for c in C],
    }


def hierarchical_group_rank_lists(cp_groups: list[list[int]], sizes: list[int]) -> list[list[list[int]]]:
    """Per level of --hierarchical-context-parallel-sizes, every CP group's subgroups at that level:
    level l of sizes [s0, s1, ...] groups s_l CP ranks spaced s0 x ... x s_(l-1) apart (level 0:
    consecutive ranks), Megatron's create_hierarchical_groups."""
    levels = []
    for level, size in enumerate(sizes):
        stride = 1
        for inner in sizes[:level]:
            stride *= inner
        lists = []
        for ranks in cp_groups:
            span = stride * size
            for block in range(0, len(ranks), span):
                lists += [[ranks[block + offset + k * stride] for k in range(size)] for offset in range(stride)]
        levels.append(lists)
    return levels


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
