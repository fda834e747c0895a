"""Where things live in a checkpoint directory (Megatron's layout) and how they are published.

    <save>/latest_checkpointed_iteration.txt    the iteration number (or "release")
    <save>/iter_0000050/                         one checkpoint
        .metadata, __<rank>_<k>.distcp           PyTorch DCP files
        common.json                              iteration, data position, schedule, layout, args
        metadata.json                            {"sharded_backend": "torch_dist", ...}, written last

Crash safety: a checkpoint is written into `iter_0000050.in_progress/`, renamed into place when
complete, and only then does the tracker change (written to a temporary file and renamed over
the old one, so a reader sees either the old number or the new one, never half a file).
"""

from __future__ import annotations

import json
import os
import shutil

TRACKER_NAME = "latest_checkpointed_iteration.txt"
METADATA_NAME = "metadata.json"
COMMON_NAME = "common.json"
DCP_METADATA_NAME = ".metadata"
IN_PROGRESS_SUFFIX = ".in_progress"
RELEASE = "release"
# Megatron's metadata.json for torch_dist checkpoints.
BACKEND_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}


def iteration_dir_name(iteration: int | str) -> str:
    return RELEASE if iteration == RELEASE else f"iter_{int(iteration):07d}"


def iteration_dir(root: str, iteration: int | str) -> str:
    return os.path.join(root, iteration_dir_name(iteration))


def in_progress_dir(root: str, iteration: int) -> str:
    return iteration_dir(root, iteration) + IN_PROGRESS_SUFFIX


def tracker_path(root: str) -> str:
    return os.path.join(root, TRACKER_NAME)


def fsync_dir(path: str) -> None:
    """Make a rename or new entry in `path` durable (a crash after this keeps it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: str, text: str) -> None:
    """Write `text` to a temporary name, fsync, rename over `path`: all or nothing."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json_durably(path: str, value: dict) -> None:
    write_file_durably(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def write_tracker(root: str, iteration: int) -> None:
    write_file_durably(tracker_path(root), f"{iteration}\n")


def publish(in_progress: str, final: str) -> None:
    """Rename a finished checkpoint folder into place, replacing an older one of the same name.

    The tracker still names the previous checkpoint while this runs, so a crash here loses at
    most this checkpoint, never the one that can be resumed from.
    """
    old = final + ".replaced"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(in_progress, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    shutil.rmtree(old, ignore_errors=True)
