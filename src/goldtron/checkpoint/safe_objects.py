"""Read what a checkpoint holds as data only: nothing in a checkpoint file can run code.

PyTorch DCP unpickles in two places. `.metadata` is a pickle of DCP's metadata classes; here it
goes through an unpickler that can build only those classes (and the save-plan classes
Megatron-Core's planner adds), `torch.Size`, dtypes and layouts.
Non-tensor values (goldtron's per-rank RNG state) are read by DCP's `DefaultLoadPlanner.load_bytes`
with `torch.load(weights_only=False)`, which runs whatever the pickle asks; here they are read with
`torch.load(weights_only=True)`, with only NumPy's array reconstruction allowed besides (the NumPy
RNG state is a uint32 array). Anything else is a CheckpointError naming the file; nothing from it
is executed. Checkpoints written by goldtron hold nothing else, so they all load.
"""

from __future__ import annotations

import io
import os
import pickle
import re

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata, ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta, TensorProperties,
    TensorStorageMetadata,
)

from goldtron.checkpoint.errors import CheckpointError

_DCP = "torch.distributed.checkpoint.metadata"
# What a `.metadata` written by torch 2.13's FileSystemWriter refers to (and nothing that acts).
_METADATA_GLOBALS = {
    *((_DCP, name) for name in ("Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata",
                                "BytesStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    # Megatron-Core's torch_dist planner keeps its save plans in the metadata (to reuse them on the
    # next save): DCP's plan dataclasses, data only.
    *(("torch.distributed.checkpoint.planner", name) for name in ("SavePlan", "WriteItem", "WriteItemType",
                                                                   "TensorWriteData", "BytesIOWriteData")),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not part of DCP's metadata")


def _refused(file: str, what: str, error: BaseException | str) -> CheckpointError:
    return CheckpointError(f"{file}: {what} ({error}). goldtron reads checkpoints as data only and did not "
                           "execute it; the file was not written by goldtron or was altered. Use a checkpoint "
                           "from a source you trust, or resume from an earlier one (edit the tracker).")


def read_dcp_metadata(checkpoint_dir: str) -> Metadata:
    """DCP's `.metadata` of `checkpoint_dir`, unpickled with DCP's own classes only, and checked
    for the fields goldtron reads (shapes, dtypes, chunks, data files inside the folder)."""
    file = os.path.join(checkpoint_dir, ".metadata")
    with open(file, "rb") as handle:  # a missing file raises FileNotFoundError for the caller
        try:
            metadata = _MetadataUnpickler(handle).load()
        except Exception as error:  # any malformed pickle: many types (EOFError, ValueError, ...)
            raise _refused(file, "not a DCP metadata file goldtron can read as data", error) from None
    _check_metadata(metadata, file)
    return metadata


def _check_metadata(metadata: object, file: str) -> None:
    # getattr throughout: an unpickled object need not have the fields its class declares.
    entries, storage = getattr(metadata, "state_dict_metadata", None), getattr(metadata, "storage_data", None)
    if not isinstance(metadata, Metadata) or not isinstance(entries, dict) or not isinstance(storage, dict):
        raise _refused(file, "does not hold DCP metadata", f"got {type(metadata).__name__}")
    for key, entry in entries.items():
        if not isinstance(key, str):
            raise _refused(file, f"entry name {key!r} is not text", type(key).__name__)
        if isinstance(entry, BytesStorageMetadata):
            continue
        size, chunks = getattr(entry, "size", None), getattr(entry, "chunks", None)
        dtype = getattr(getattr(entry, "properties", None), "dtype", None)
        ok = (isinstance(entry, TensorStorageMetadata) and isinstance(size, torch.Size) and isinstance(dtype, torch.dtype)
              and isinstance(chunks, list)
              and all(isinstance(c, ChunkStorageMetadata) and isinstance(getattr(c, "offsets", None), torch.Size)
                      and isinstance(getattr(c, "sizes", None), torch.Size) for c in chunks))
        if not ok or any(n < 0 for n in size):
            raise _refused(file, f"entry {key!r} is not a well-formed tensor or bytes entry", type(entry).__name__)
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(getattr(index, "fqn", None), str):
            raise _refused(file, "a storage entry is not keyed by a MetadataIndex", type(index).__name__)
        name = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        # A data file must sit in the checkpoint folder: no path that leads outside it.
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", "..") \
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (offset, length)):
            raise _refused(file, f"storage entry of {index.fqn!r} is malformed",
                           f"file {name!r}, offset {offset!r}, length {length!r}")
    storage_meta = getattr(metadata, "storage_meta", None)
    if storage_meta is not None and not isinstance(storage_meta, StorageMeta):
        raise _refused(file, "storage_meta is malformed", type(storage_meta).__name__)
    metadata.storage_meta = storage_meta


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read as data (see read_dcp_metadata)."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_dcp_metadata(str(self.path))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def numpy_array_globals() -> list:
    """What NumPy arrays (the NumPy RNG state) need besides torch's weights_only defaults."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def load_object(data: bytes | io.BytesIO, where: str):
    """A non-tensor checkpoint value (torch.save bytes) as plain data: tensors, numbers, strings,
    lists, tuples, dicts and NumPy arrays; a CheckpointError naming `where` for anything else."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with torch.serialization.safe_globals(numpy_array_globals()):
            return torch.load(stream, weights_only=True)
    except Exception as error:  # weights_only refusals are UnpicklingError; damage gives others
        raise _refused(where, "holds an object that is not plain data", refused_global_line(error)) from None


def refused_global_line(error: BaseException) -> str:
    """torch's weights_only refusal is a paragraph; the line that names the refused global is the point."""
    lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else f"{type(error).__name__}: {str(error)[:200]}"
