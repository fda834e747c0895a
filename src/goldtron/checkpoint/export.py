"""Read a torch_dist checkpoint in one process, whatever layout saved it: its description
(`goldtron ckpt inspect`) and its tensors joined into full ones (`goldtron ckpt export --to torch`,
and the model tensors that `--to hf` renames: see hf_export.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from goldtron.checkpoint.errors import CheckpointError, dcp_read_error
from goldtron.checkpoint.global_shard import GlobalShardLoadPlanner
from goldtron.checkpoint.layout import METADATA_NAME, TRACKER_NAME
from goldtron.checkpoint.model_state import ADAM_MOMENTS, OPTIMIZER_PREFIX, is_model_key
from goldtron.checkpoint.rng_state import RNG_PREFIX
from goldtron.checkpoint.safe_objects import SafeFileSystemReader
from goldtron.checkpoint.validation import FoundCheckpoint, find_checkpoint, validate_checkpoint_dir


def open_checkpoint(path: str) -> FoundCheckpoint:
    """`path` is a save directory (the tracker picks the iteration) or one iter_XXXXXXX folder."""
    if os.path.exists(os.path.join(path, METADATA_NAME)):
        from goldtron.checkpoint.megatron_format import is_megatron_checkpoint, validate_megatron_checkpoint_dir

        if is_megatron_checkpoint(path):
            common, metadata, megatron = validate_megatron_checkpoint_dir(path)
            return FoundCheckpoint(path, common["iteration"], common, metadata, megatron)
        common, metadata = validate_checkpoint_dir(path)
        return FoundCheckpoint(path, common.get("iteration", "?"), common, metadata)
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} holds no checkpoint (no {TRACKER_NAME}, no {METADATA_NAME})")
    return found


@dataclass
class TensorEntry:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: int

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * self.dtype.itemsize


def tensor_entries(found: FoundCheckpoint) -> list[TensorEntry]:
    return [TensorEntry(key, tuple(md.size), md.properties.dtype, len(md.chunks))
            for key, md in sorted(found.dcp_metadata.state_dict_metadata.items())
            if isinstance(md, TensorStorageMetadata)]


def rng_ranks(found: FoundCheckpoint) -> list[str]:
    return sorted(k[len(RNG_PREFIX):] for k in found.dcp_metadata.state_dict_metadata if k.startswith(RNG_PREFIX))


def read_full_tensors(found: FoundCheckpoint, wanted: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose key is `wanted`, at their global shape (one process, no
    process group). DCP reads only the requested keys, so a model-only read skips the Adam state."""
    targets = {e.key: torch.empty(e.shape, dtype=e.dtype) for e in tensor_entries(found) if wanted(e.key)}
    with warnings.catch_warnings():
        # DCP warns that it assumes one process when no process group exists: that is the intent.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(targets, storage_reader=SafeFileSystemReader(found.path),
                     planner=GlobalShardLoadPlanner(found.path), no_dist=True)
        except (Exception, CheckpointException) as error:  # DCP wraps what failed in its own exception
            raise dcp_read_error(error, found.path) from error
    return targets


def plain_state_dict(found: FoundCheckpoint) -> dict:
    """One plain dict: model tensors by parameter name, Adam state by kind and name, and the
    replicated state. RNG states are left out: they belong to ranks of the saved layout."""
    tensors = read_full_tensors(found)
    out = {
        "model": {k: v for k, v in tensors.items() if is_model_key(k)},
        "iteration": found.common["iteration"],
        "consumed_samples": found.common["consumed_samples"],
        "opt_param_scheduler": found.common["opt_param_scheduler"],
        "layout": found.common["layout"],
        "args": found.common["args"],
    }
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            kind, name = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            optimizer.setdefault(kind, {})[name] = value
    if optimizer:
        missing = [k for k in (*ADAM_MOMENTS, "step") if k not in optimizer]
        if missing:
            raise CheckpointError(f"{found.path}: optimizer state lacks {missing}; the checkpoint is damaged")
        out["optimizer"] = optimizer
    return out


def model_tensors(found: FoundCheckpoint) -> dict[str, torch.Tensor]:
    """The model's full tensors by parameter name (vocabulary weights with their real rows)."""
    return read_full_tensors(found, is_model_key)
