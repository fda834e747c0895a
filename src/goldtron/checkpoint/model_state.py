"""The model and optimizer as DCP values: every tensor under its global name, with its global
shape and this rank's offset in it, so a checkpoint saved under one TP/PP/DP loads under another.

Keys (flat, one per global tensor):
    decoder.layers.7.mlp.linear_fc1.weight            a parameter (global layer index)
    optimizer.state.exp_avg.<parameter name>          Adam's first moment, sharded like the parameter
    optimizer.state.exp_avg_sq.<parameter name>       Adam's second moment
    optimizer.state.step.<parameter name>             Adam's step count (a replicated scalar)
With --use-distributed-optimizer a rank holds the Adam state of a flat range of each parameter
and writes it as row chunks of the same global tensors (flat_range.py): the format is unchanged.
`optimizer` here is training/optimizer.py's interface: `held_state(param)` says which part a rank
holds, `param_groups`/`state` are the inner AdamW's (primed before a load).

How a parameter maps to its global tensor:
- `tensor_parallel_dim` None: replicated over TP; the whole tensor at offset 0 (DCP writes one copy).
- `tensor_parallel_dim` d: equal contiguous chunks over TP; offset tp_rank * local size on dim d.
- `tensor_parallel_blocks` b > 1 (SwiGLU's fc1: [gate; up]): the saved global tensor is the full
  [gate; up] in that order, whatever the TP size; each of the b blocks is split over TP on its own,
  and a rank's local tensor is [its gate rows; its up rows], so it writes (and reads) b chunks:
  block k's rows at offset k * (global size / b) + tp_rank * (local size / b).
- `real_rows` (vocab-sharded weights): only the real vocabulary rows are saved; the global shape
  is [real vocab, hidden], so it does not depend on the TP padding, and the last chunk is shorter.
- `is_embedding_copy` (the last stage's copy of the tied word embedding): never saved; on load it
  reads the word embedding's rows (and their Adam state), which it equals by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goldtron.checkpoint.flat_range import flat_range_shard
from goldtron.checkpoint.global_shard import GlobalShard, GlobalShardBlocks
from goldtron.checkpoint.rng_state import RNG_PREFIX
from goldtron.model.embedding import WORD_EMBEDDING_NAME

OPTIMIZER_PREFIX = "optimizer.state."
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def optimizer_key(kind: str, parameter_name: str) -> str:
    return f"{OPTIMIZER_PREFIX}{kind}.{parameter_name}"


def is_model_key(key: str) -> bool:
    return not key.startswith((OPTIMIZER_PREFIX, RNG_PREFIX))


@dataclass
class ParameterPlacement:
    """Where one local parameter sits in its saved global tensor."""

    saved_name: str               # the global tensor's key (the word embedding's for its copy)
    param: torch.nn.Parameter
    global_shape: tuple[int, ...]
    global_offset: tuple[int, ...]
    rows: int | None              # leading local rows that are real (vocab weights); None = all
    is_copy: bool                 # the tied embedding's last-stage copy: loaded, never saved
    blocks: int = 1               # tensor_parallel_blocks; global_offset is then block 0's

    def local_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of `tensor` (the parameter or a same-shaped Adam moment) that is saved."""
        return tensor if self.rows is None else tensor[: self.rows]

    def shard(self, tensor: torch.Tensor, copy=lambda t: t) -> GlobalShard | GlobalShardBlocks:
        """`tensor`'s saved part (passed through `copy`) as DCP values at this parameter's place."""
        local = copy(self.local_view(tensor))
        if self.blocks == 1:
            return GlobalShard(local, self.global_shape, self.global_offset)
        dim = self.param.tensor_parallel_dim
        local_block, global_block = local.shape[dim] // self.blocks, self.global_shape[dim] // self.blocks
        shards = []
        for k in range(self.blocks):
            offset = list(self.global_offset)
            offset[dim] += k * global_block
            shards.append(GlobalShard(local.narrow(dim, k * local_block, local_block), self.global_shape, tuple(offset)))
        return GlobalShardBlocks(shards)


def parameter_placements(model: torch.nn.Module, tp_rank: int, tp_size: int,
                         real_vocab_size: int) -> list[ParameterPlacement]:
    """One placement per local parameter that holds any saved data (a TP rank whose vocab slice is
    all padding holds none of the vocab weight and is left out)."""
    out = []
    for name, param in model.named_parameters():
        is_copy = bool(getattr(param, "is_embedding_copy", False))
        saved_name = WORD_EMBEDDING_NAME if is_copy else name
        dim = param.tensor_parallel_dim
        rows = getattr(param, "real_rows", None)
        blocks = getattr(param, "tensor_parallel_blocks", 1)
        shape, offset = list(param.shape), [0] * param.dim()
        if rows is not None:
            if rows == 0:
                continue
            shape[0], offset[0] = real_vocab_size, tp_rank * param.shape[0]
        elif dim is not None:
            shape[dim], offset[dim] = param.shape[dim] * tp_size, tp_rank * (param.shape[dim] // blocks)
        out.append(ParameterPlacement(saved_name, param, tuple(shape), tuple(offset), rows, is_copy, blocks))
    return out


def model_and_optimizer_state(placements: list[ParameterPlacement], optimizer,
                              snapshot: bool) -> dict:
    """The DCP values to save. `snapshot` clones every tensor (for a background write while
    training goes on changing the live ones)."""
    copy = (lambda t: t.detach().clone()) if snapshot else (lambda t: t.detach())
    state: dict = {}
    for place in placements:
        if place.is_copy:
            continue
        state[place.saved_name] = place.shard(place.param, copy)
        if optimizer is not None:
            state.update(_adam_values(place, optimizer, copy))
    return state


def _adam_values(place: ParameterPlacement, optimizer, copy=lambda t: t) -> dict:
    """The DCP values of the Adam state this rank holds for `place`: of the whole local tensor, or
    of a flat range of it (the distributed optimizer's owned range, flat_range.py)."""
    held = optimizer.held_state(place.param)
    if held is None:
        return {}
    if held.flat_range is None:
        shard = place.shard
    else:
        start, end = held.flat_range
        shard = lambda t, copy=copy: flat_range_shard(place, start, end, copy(t))  # noqa: E731
    values: dict = {}
    for kind in ADAM_MOMENTS:
        value = shard(held.adam[kind], copy)
        if value is not None:  # None: a range of padded vocabulary rows only
            values[optimizer_key(kind, place.saved_name)] = value
    if values:
        values[optimizer_key("step", place.saved_name)] = copy(held.adam["step"])
    return values


def has_optimizer_state(optimizer) -> bool:
    return any(optimizer.state.get(p) for group in optimizer.param_groups for p in group["params"])


def _prime_adam_state(optimizer) -> None:
    """Create Adam's per-parameter state (as its first step would) so DCP can load into it."""
    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise NotImplementedError("checkpointing AdamW with amsgrad is not supported")
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                # The same dtype AdamW gives a fresh step counter (the default float dtype).
                state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def load_targets(placements: list[ParameterPlacement], optimizer) -> dict:
    """DCP values that load straight into the live parameters (and Adam state, when given)."""
    state: dict = {}
    for place in placements:
        state[place.saved_name] = place.shard(place.param.data)
    if optimizer is not None:
        _prime_adam_state(optimizer)
        for place in placements:
            state.update(_adam_values(place, optimizer))
    return state
