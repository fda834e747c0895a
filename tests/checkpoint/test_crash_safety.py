"""Issue 3, "What must be shown" 3: every rank of a TP2 run is killed with SIGKILL while it is
writing a checkpoint. The previous checkpoint must stay loadable, the tracker must still name it,
and a new run must resume from it exactly (its steps equal the killed run's) and clean up.

The rank processes are started here (not through torchrun, whose workers live in sessions of
their own), so the test can kill exactly the ranks, as a lost node would. The model has a large
vocabulary so the write takes long enough to be caught in the middle: the test waits until a
rank has begun its data file in the unfinished folder, then kills.
"""

import os
import signal
import subprocess
import sys
import time

from checkpoint.ckpt_runs import after, layout_run
from goldtron.checkpoint.validation import find_checkpoint
from support.torchrun import TINY_MODEL, free_port, layout_flags, read_metrics_file

BIG_VOCAB = ["--hidden-size", "256", "--vocab-size", "60000"]  # ~220 MB checkpoint: a write worth killing
FLAGS = TINY_MODEL + BIG_VOCAB + layout_flags(tp=2) + ["--train-iters", "4", "--save-interval", "2"]


def _start_ranks(save, metrics) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   GOLDTRON_METRICS_FILE=str(metrics))
        procs.append(subprocess.Popen([sys.executable, "-m", "goldtron", "train", *FLAGS, "--save", str(save),
                                       "--load", str(save)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    return procs


def _kill_when_writing(procs, unfinished, deadline_s: float = 300) -> bool:
    """SIGKILL every rank once a data file appears in `unfinished`; False if the run ended first."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and all(p.poll() is None for p in procs):
        if unfinished.is_dir() and any(f.suffix == ".distcp" for f in unfinished.iterdir()):
            for p in procs:
                p.send_signal(signal.SIGKILL)
            for p in procs:
                p.wait(timeout=30)
            return True
        time.sleep(0.002)
    for p in procs:  # never leave a rank behind, whatever happened
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    return False


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    save = tmp_path / "ckpt"
    killed_metrics = tmp_path / "killed.metrics.jsonl"
    procs = _start_ranks(save, killed_metrics)
    assert _kill_when_writing(procs, save / "iter_0000004.in_progress"), \
        "the run ended before the iteration-4 save could be interrupted"

    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert not (save / "iter_0000004").exists()
    found = find_checkpoint(str(save))  # raises if the iteration-2 checkpoint is damaged
    assert found.iteration == 2 and found.common["iteration"] == 2

    steps, log = layout_run(tmp_path, "resumed", "TP2PP1", BIG_VOCAB + [
        "--train-iters", "4", "--save-interval", "2", "--save", str(save), "--load", str(save)])
    assert "at iteration 2" in log
    killed = read_metrics_file(killed_metrics)
    assert [s["iteration"] for s in killed] == [1, 2, 3, 4]  # the kill came in the save after step 4
    for ours, ref in zip(steps, after(killed, 2), strict=True):
        assert (ours["lm_loss"], ours["grad_norm"], ours["num_zeros"]) == \
            (ref["lm_loss"], ref["grad_norm"], ref["num_zeros"]), ours["iteration"]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert not list(save.glob("*.in_progress"))
