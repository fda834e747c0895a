"""Find the checkpoint `--load` names and check it is whole before anything is read from it.

Every rank runs these checks on the same files, so a bad checkpoint gives the same error on
every rank (no rank waits in a collective for one that failed). Nothing here writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from goldtron.checkpoint.common_state import check_common_state
from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.layout import (
    BACKEND_METADATA, COMMON_NAME, DCP_METADATA_NAME, IN_PROGRESS_SUFFIX, METADATA_NAME, RELEASE, TRACKER_NAME,
    iteration_dir, tracker_path,
)
from goldtron.checkpoint.megatron_common import MEGATRON_COMMON_NAME
from goldtron.checkpoint.safe_objects import load_object, read_dcp_metadata


@dataclass
class FoundCheckpoint:
    path: str               # the iter_XXXXXXX (or release) folder
    iteration: int | str    # a number, or "release"
    common: dict            # common.json (for a Megatron checkpoint: its fields, read from common.pt)
    dcp_metadata: Metadata  # what DCP saved: every key with its global size and chunks
    megatron: object = None  # megatron_format.MegatronCheckpoint when Megatron-Core wrote it

    @property
    def common_file(self) -> str:
        """The file `common` was read from (common.json, or a Megatron checkpoint's common.pt)."""
        return os.path.join(self.path, MEGATRON_COMMON_NAME if self.megatron is not None else COMMON_NAME)


def _leftovers_only(entries: list[str]) -> bool:
    """True when a folder holds nothing but what an interrupted first save leaves behind."""
    return all(e.endswith(IN_PROGRESS_SUFFIX) or ".tmp." in e for e in entries)


def read_tracker(root: str) -> int | str:
    path = tracker_path(root)
    try:
        text = open(path).read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read checkpoint tracker {path}: {error}") from error
    if text == RELEASE:
        return RELEASE
    try:
        iteration = int(text)
    except ValueError:
        iteration = -1
    if iteration < 0:
        raise CheckpointError(f"checkpoint tracker {path} holds {text!r}, not an iteration number or 'release'; "
                              "write the iteration to resume from into it (e.g. 50), or point --load elsewhere")
    return iteration


def find_checkpoint(root: str) -> FoundCheckpoint | None:
    """The checkpoint the tracker in `root` names, checked; None when `root` has no checkpoint yet
    (missing, empty, or only an interrupted first save), which means "start from scratch"."""
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise CheckpointError(f"--load {root} is a file, not a checkpoint directory")
        return None
    entries = sorted(os.listdir(root))
    if not os.path.exists(tracker_path(root)):
        if _leftovers_only(entries):
            return None
        shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "")
        raise CheckpointError(
            f"--load {root} is not a checkpoint directory: it has no {TRACKER_NAME} (it holds: {shown}). "
            "Point --load at the folder that contains the tracker file and the iter_XXXXXXX folders, "
            "or at an empty/missing folder to start from scratch.")
    iteration = read_tracker(root)
    path = iteration_dir(root, iteration)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint tracker {tracker_path(root)} names iteration {iteration}, but {path} "
                              "does not exist; write an existing iteration into the tracker or restore that folder")
    from goldtron.checkpoint.megatron_format import is_megatron_checkpoint, validate_megatron_checkpoint_dir

    if is_megatron_checkpoint(path):
        return FoundCheckpoint(path, iteration, *validate_megatron_checkpoint_dir(path))
    common, metadata = validate_checkpoint_dir(path)
    return FoundCheckpoint(path, iteration, common, metadata)


def validate_checkpoint_dir(path: str) -> tuple[dict, Metadata]:
    """(common.json, DCP metadata) of a complete torch_dist checkpoint folder, or a CheckpointError
    naming the first missing, foreign or truncated file."""
    read_backend_marker(path)
    common_path = os.path.join(path, COMMON_NAME)
    try:
        common = json.load(open(common_path))
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{common_path} is missing or unreadable ({error}); the checkpoint in {path} "
                              "was not written by goldtron or is damaged") from error
    check_common_state(common, common_path)
    return common, read_whole_dcp_files(path)


def read_whole_dcp_files(path: str) -> Metadata:
    """DCP's metadata of `path`, after checking every data file it points into is there, long
    enough, and every object in them reads as data."""
    try:
        metadata = read_dcp_metadata(path)
    except OSError as error:
        raise CheckpointError(f"{os.path.join(path, DCP_METADATA_NAME)} is missing or unreadable "
                              f"({type(error).__name__}: {error}); the checkpoint in {path} is damaged") from error
    check_shard_files(path, metadata)
    check_objects(path, metadata)
    return metadata


def read_backend_marker(path: str) -> dict:
    """metadata.json of a checkpoint folder, checked to say torch_dist (goldtron's and Megatron's alike)."""
    marker = os.path.join(path, METADATA_NAME)
    try:
        backend = json.load(open(marker))
    except FileNotFoundError:
        raise CheckpointError(f"{marker} is missing: {path} is not a complete torch_dist checkpoint "
                              "(metadata.json is written last, so the save that made it did not finish)") from None
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{marker} is unreadable ({error}); the checkpoint in {path} is damaged") from error
    if not isinstance(backend, dict):
        raise CheckpointError(f"{marker} holds a {type(backend).__name__}, not an object like "
                              f"{json.dumps(BACKEND_METADATA)}; the checkpoint in {path} is damaged")
    if backend.get("sharded_backend") != BACKEND_METADATA["sharded_backend"]:
        raise CheckpointError(f"{marker} says sharded_backend={backend.get('sharded_backend')!r}; goldtron reads "
                              "only torch_dist checkpoints (--ckpt-format torch_dist)")
    return backend


def check_shard_files(path: str, metadata: Metadata) -> None:
    """Every data file DCP's metadata points into exists and is long enough for every item in it."""
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, length in sorted(needed.items()):
        file = os.path.join(path, name)
        try:
            size = os.path.getsize(file)
        except OSError:
            raise CheckpointError(f"checkpoint shard {file} is missing; the checkpoint in {path} is incomplete. "
                                  "Restore the file or resume from an earlier checkpoint (edit the tracker).") from None
        if size < length:
            raise CheckpointError(f"checkpoint shard {file} is truncated: {size} bytes, its items need {length}. "
                                  "Restore the file or resume from an earlier checkpoint (edit the tracker).")


def check_objects(path: str, metadata: Metadata) -> None:
    """Every non-tensor value (the RNG states) reads as plain data, before any rank loads one: a
    crafted value is refused here on every rank alike, with the file named, and never executed."""
    wanted = {key for key, entry in metadata.state_dict_metadata.items() if isinstance(entry, BytesStorageMetadata)}
    for index, info in metadata.storage_data.items():
        if index.fqn not in wanted:
            continue
        file = os.path.join(path, info.relative_path)
        transforms = getattr(info, "transform_descriptors", None)
        if transforms:
            raise CheckpointError(f"{file}: item {index.fqn} is stored through {transforms}; "
                                  "goldtron writes no stream transforms and reads none")
        with open(file, "rb") as handle:
            handle.seek(info.offset)
            load_object(handle.read(info.length), f"{file} (item {index.fqn})")


# Flags that change which tensors a layer has or what they compute, with the values a checkpoint
# saved before they existed implies. Without this check a learned-position or biased checkpoint
# would load into a rope or bias-free model with the extra tensors silently left unused.
# num_query_groups is the resolved count of key/value heads (heads without GQA), so a GQA model with
# as many groups as heads, which is plain multi-head attention bit for bit, loads into one.
ARCHITECTURE_FLAGS = {
    "position_embedding_type": ("--position-embedding-type", "learned_absolute"),
    "swiglu": ("--swiglu", False),
    "add_bias_linear": ("--disable-bias-linear", True),
    "normalization": ("--normalization", "LayerNorm"),
    "qk_layernorm": ("--qk-layernorm", False),
    "num_query_groups": ("--group-query-attention --num-query-groups", None),
}


def _architecture_value(recorded: dict, dest: str, default):
    """`dest` as a run's arguments record it. A record from before the flag existed is the model
    without it; before num_query_groups existed, a key/value head per attention head."""
    if dest == "num_query_groups" and dest not in recorded:
        return recorded.get("num_attention_heads")
    return recorded.get(dest, default)


def check_architecture(saved_args: dict | None, args, path: str) -> None:
    """Raise when the run's architecture flags differ from those the checkpoint was saved with."""
    if not saved_args:
        return  # no saved flags: the key and shape checks are all there is
    problems = []
    for dest, (flag, default) in ARCHITECTURE_FLAGS.items():
        saved, ours = _architecture_value(saved_args, dest, default), _architecture_value(vars(args), dest, default)
        if saved != ours:
            problems.append(f"{flag}: {dest} {saved!r} in the checkpoint, {ours!r} in this run")
    if problems:
        raise CheckpointError(f"{path} was saved by a model of another architecture: " + "; ".join(problems)
                              + ". Use the checkpoint's flags (its common.json 'args' holds them), "
                              "or --dist-ckpt-strictness ignore_all to load what matches.")
