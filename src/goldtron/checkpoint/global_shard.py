"""A rank's piece of a global tensor at an arbitrary offset, and the DCP planners that save and
load such pieces.

Why not DTensor or ShardedTensor: DTensor places shards by `torch.chunk` rules, which cannot say
"rows 0..639 on rank 0, rows 640..1000 on rank 1" (the real vocabulary rows of a TP2 run: the
padded size depends on TP, the real one does not). ShardedTensor can, but needs a collective or
hand-built global metadata to exist, and is deprecated. DCP itself only needs, per value, the
write items (global size + this chunk's offset and sizes) and, on load, this rank's chunk list.
`GlobalShard` provides exactly those through DCP's checkpointable hooks, and the two planners
below resolve a `GlobalShard` to its local tensor. DCP does the rest: it deduplicates identical
chunks written by several ranks (DP replicas, TP-replicated LayerNorms) and, on load, reads each
rank's chunk from whichever saved chunks overlap it, so any saved layout loads into any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType


@dataclass
class GlobalShard:
    """`local` is the block of a `global_shape` tensor that starts at `global_offset`.

    On save `local` is read; on load it is written in place, so it may be a view of a live
    parameter (e.g. its real rows only).
    """

    local: torch.Tensor
    global_shape: tuple[int, ...]
    global_offset: tuple[int, ...]

    def __post_init__(self):
        if len(self.global_shape) != self.local.dim() or len(self.global_offset) != self.local.dim():
            raise ValueError(f"GlobalShard: shape {self.global_shape} / offset {self.global_offset} "
                             f"do not match a {self.local.dim()}-d local tensor")
        for size, offset, whole in zip(self.local.shape, self.global_offset, self.global_shape):
            if offset < 0 or offset + size > whole:
                raise ValueError(f"GlobalShard: local {tuple(self.local.shape)} at {self.global_offset} "
                                 f"does not fit in {self.global_shape}")

    def size(self) -> torch.Size:
        # DCP compares this with the saved global size before planning reads.
        return torch.Size(self.global_shape)

    def _chunk(self) -> ChunkStorageMetadata:
        return ChunkStorageMetadata(offsets=torch.Size(self.global_offset), sizes=self.local.size())

    # ---- DCP's checkpointable hooks (planner_helpers looks these up by name) ----------------
    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        return [WriteItem(
            index=MetadataIndex(fqn, torch.Size(self.global_offset)),
            type=WriteItemType.SHARD,
            tensor_data=TensorWriteData(chunk=self._chunk(),
                                        properties=TensorProperties.create_from_tensor(self.local),
                                        size=torch.Size(self.global_shape)),
        )]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [self._chunk()]


@dataclass
class GlobalShardBlocks:
    """Several `GlobalShard`s of one global tensor held by one rank: one DCP value, several chunks.

    SwiGLU's fc1 under TP is the case: a rank holds [its gate rows; its up rows], which sit in two
    separate places of the saved [gate; up] tensor. DCP asks for a chunk by its global offset.
    """

    shards: list[GlobalShard]

    def size(self) -> torch.Size:
        return self.shards[0].size()

    def shard_at(self, offset) -> GlobalShard:
        for shard in self.shards:
            if tuple(shard.global_offset) == tuple(offset):
                return shard
        raise KeyError(f"no block of this tensor starts at {tuple(offset)}")

    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        return [item for shard in self.shards for item in shard.__create_write_items__(fqn, shard)]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [shard._chunk() for shard in self.shards]


def _local_of(value, index: MetadataIndex) -> torch.Tensor | None:
    """The local tensor a (possibly blocked) GlobalShard value holds at `index`; None for other values."""
    if isinstance(value, GlobalShardBlocks):
        value = value.shard_at(index.offset)
    return value.local if isinstance(value, GlobalShard) else None


def _writable(tensor: torch.Tensor) -> torch.Tensor:
    """What the file writer may serialise: a CPU tensor that owns exactly its bytes.

    DCP's writer calls torch.save on the tensor, which writes the whole underlying storage;
    a view (the real rows of a padded vocab weight) would drag the padding along.
    """
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size() or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


class GlobalShardSavePlanner(DefaultSavePlanner):
    """DCP's default save planner that also accepts `GlobalShard` values (state dict is flat)."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def lookup_object(self, index: MetadataIndex):
        value = self.state_dict[index.fqn]
        local = _local_of(value, index)
        if local is not None:
            return _writable(local)
        if isinstance(value, torch.Tensor):
            return _writable(value)
        return super().lookup_object(index)


class GlobalShardLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner that also fills `GlobalShard` values in place, and reads
    non-tensor values as data only (`source` names the checkpoint in errors)."""

    def __init__(self, source: str = "the checkpoint"):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.source = source

    def set_up_planner(self, state_dict, metadata=None, is_coordinator: bool = False) -> None:
        # The default first materialises meta tensors by rewriting the state dict in place,
        # and in doing so replaces values it does not know (a GlobalShard) with None. Nothing
        # here lives on the meta device, so that step is skipped; the rest is the default's.
        self.original_state_dict = state_dict
        self.state_dict = state_dict
        self.metadata = metadata
        self.is_coordinator = is_coordinator

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        local = _local_of(self.state_dict[index.fqn], index)
        return local if local is not None else super().lookup_tensor(index)

    def load_bytes(self, read_item, value) -> None:
        # DCP's default unpickles with torch.load(weights_only=False): code in the file would run.
        from goldtron.checkpoint.safe_objects import load_object

        info = self.metadata.storage_data.get(read_item.storage_index) if self.metadata is not None else None
        file = f"{self.source}/{info.relative_path}" if info is not None else self.source
        self.state_dict[read_item.dest_index.fqn] = load_object(value, f"{file} (item {read_item.storage_index.fqn})")
