"""Write one checkpoint: DCP files into `iter_XXXXXXX.in_progress/`, then (rank 0) common.json,
metadata.json last, rename into place, and only then the tracker.

Why the tracker may change right after `dcp.save` returns on rank 0: DCP's last step gathers
every rank's write results on the coordinator (rank 0) before it writes `.metadata`, and a rank
reports only after its files are written and fsynced. So when rank 0 gets past `dcp.save`,
every rank's shards are on disk; that gather is the barrier the tracker update needs.
"""

from __future__ import annotations

import os
import shutil

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from goldtron.checkpoint.global_shard import GlobalShardSavePlanner
from goldtron.checkpoint.layout import (
    BACKEND_METADATA, COMMON_NAME, METADATA_NAME, in_progress_dir, iteration_dir, publish, write_json_durably,
    write_tracker,
)

# Two writer threads per rank (two data files each): serialising one tensor overlaps the kernel
# write of another. Measured ~1.7x faster than one thread for a 1.2 GB save on this 2-core machine.
WRITER_THREADS = 2


def prepare_in_progress_dir(root: str, iteration: int, group) -> str:
    """Rank 0 clears what an interrupted save of this iteration left; everyone waits for it."""
    path = in_progress_dir(root, iteration)
    if dist.get_rank(group) == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    dist.barrier(group=group)
    return path


def write_checkpoint(state: dict, common: dict, root: str, iteration: int, group) -> str:
    """Write `state` (DCP values) and `common` as checkpoint `iteration` under `root`; returns
    the final folder. Collective over `group`."""
    work = in_progress_dir(root, iteration)
    writer = dcp.FileSystemWriter(work, sync_files=True, thread_count=WRITER_THREADS)
    dcp.save(state, storage_writer=writer, planner=GlobalShardSavePlanner(), process_group=group)
    final = iteration_dir(root, iteration)
    if dist.get_rank(group) == 0:
        write_json_durably(os.path.join(work, COMMON_NAME), common)
        write_json_durably(os.path.join(work, METADATA_NAME), BACKEND_METADATA)  # last: marks it complete
        publish(work, final)
        write_tracker(root, iteration)
    return final
