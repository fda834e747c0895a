"""Ranks for `goldtron launch`'s own tests (tests/unit/test_launch.py): `launch()` forks them as it
forks `goldtron train`'s ranks, and each behaves as the mode in its one argument says.

    python launch_probe.py LOG_DIR NPROC MODE

- ok:     each rank prints its environment as one JSON line, and a last line with no newline;
- crash:  rank 1 writes a message to stderr and fails with 3 at once; the others wait (as ranks blocked
          in a collective would) until they are ended, first printing their pid;
- config: every rank reports a bad flag and fails with 2 (the trainer's flag error), rank 0 last;
- wait:   every rank prints its pid and waits, until a signal to the launcher ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from goldtron.training.launch import launch

ENVIRONMENT_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID")


def probe(args: list[str]) -> int:
    mode, rank = args[0], int(os.environ["RANK"])
    if mode == "ok":
        print(json.dumps({key: os.environ.get(key) for key in ENVIRONMENT_KEYS}))
        print(f"last words of rank {rank}", end="")
        return 0
    if mode in ("crash", "wait"):
        if mode == "crash" and rank == 1:
            print("boom: injected failure on rank 1", file=sys.stderr)
            return 3
        print(f"waiting pid {os.getpid()}", flush=True)
        time.sleep(120)
        return 0
    if mode == "config":
        time.sleep(0.5 if rank == 0 else 0.0)  # the first failure is not rank 0's: each must still speak
        print(f"goldtron train: error (rank {rank}): --bad-flag is not a flag", file=sys.stderr)
        return 2
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    log_dir, nproc, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    code = launch(nproc, [mode], log_dir, rank_main=probe)
    sys.stdout.flush()
    os._exit(code)
