"""Issue 14: `goldtron train` under torchrun receiving SIGTERM (what a scheduler or `timeout` sends)
while an async save is being written. torchrun passes the signal to its ranks, which stop at once
(Python's default for SIGTERM); every process of the run is gone within torchrun's grace, and the
tracker names a complete checkpoint: the one from before, or the new one if it got to finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from goldtron.checkpoint.validation import find_checkpoint
from support.torchrun import TINY_MODEL, free_port

pytestmark = pytest.mark.timeout(300)

BIG_VOCAB = ["--hidden-size", "128", "--vocab-size", "60000"]  # ~90 MB per save: a write worth catching


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for children in os.scandir(f"/proc/{parent}/task"):
            try:
                with open(f"{children.path}/children") as handle:
                    pids = {int(child) for child in handle.read().split()}
            except OSError:
                continue
            found |= pids
            frontier.extend(pids)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_during_an_async_save_leaves_a_complete_tracked_checkpoint(tmp_path):
    save = tmp_path / "ckpt"
    unfinished = save / "iter_0000004.in_progress"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--module", "goldtron", "train", *TINY_MODEL, *BIG_VOCAB,
           "--train-iters", "6", "--save-interval", "2", "--async-save", "--save", str(save)]
    run = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while run.poll() is None and time.monotonic() < deadline:
            if unfinished.is_dir() and any(f.suffix == ".distcp" for f in unfinished.iterdir()):
                break
            time.sleep(0.002)
        assert run.poll() is None, "the run ended before the iteration-4 save could be interrupted"
        tree = _descendants(run.pid)
        run.send_signal(signal.SIGTERM)  # torchrun alone; it passes the signal on to its ranks
        run.wait(timeout=60)
        ends = time.monotonic() + 30
        while any(_alive(pid) for pid in tree) and time.monotonic() < ends:
            time.sleep(0.1)
        assert not [pid for pid in tree if _alive(pid)], "a rank outlived torchrun"
    finally:
        for pid in [pid for pid in tree if _alive(pid)]:
            os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)

    tracked = (save / "latest_checkpointed_iteration.txt").read_text().strip()
    assert tracked in ("2", "4"), tracked
    found = find_checkpoint(str(save))  # raises if the tracked checkpoint is not complete
    assert found.common["iteration"] == int(tracked)
