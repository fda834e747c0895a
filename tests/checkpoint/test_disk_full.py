"""Issue 14, "What must be shown" 3: a save that hits a file-size limit (RLIMIT_FSIZE, set in the
trainer's process: what a full disk or a quota does to a write) fails with an error naming the
folder and the bytes it needed; the tracker still names the previous checkpoint, nothing half-written
is left, and that checkpoint loads bit for bit (a later run from it repeats the failed run's steps).
"""

from __future__ import annotations

import resource

import pytest

from support.tiny_checkpoint import train_tiny
from support.torchrun import read_metrics_file

COMPARED = ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate")

pytestmark = pytest.mark.timeout(300)


def _limit_file_size(limit: int):
    def apply() -> None:  # runs in the child, before the trainer starts
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


# Each rank writes two data files (two writer threads): a limit under both, or between their
# sizes, so that one writer thread alone fails (DCP's extra thread would otherwise fail silently).
LIMITS = {"both files": lambda sizes: min(sizes) // 2, "one file": lambda sizes: (min(sizes) + max(sizes)) // 2}


@pytest.mark.parametrize("over", list(LIMITS))
def test_save_over_the_file_size_limit_fails_cleanly_and_keeps_the_tracked_checkpoint(over, tmp_path):
    save = tmp_path / "ckpt"
    first = train_tiny(["--train-iters", "2", "--save", str(save)])
    assert first.returncode == 0, first.stderr[-3000:]
    sizes = sorted(f.stat().st_size for f in (save / "iter_0000002").glob("*.distcp"))
    assert len(sizes) == 2 and sizes[0] < sizes[1], sizes
    limit = LIMITS[over](sizes)
    before = {f.name: f.read_bytes() for f in (save / "iter_0000002").iterdir()}

    flags = ["--train-iters", "4", "--load", str(save)]
    limited_metrics = tmp_path / "limited.jsonl"
    limited = train_tiny(flags + ["--save", str(save), "--save-interval", "4"], preexec_fn=_limit_file_size(limit),
                         env={"GOLDTRON_METRICS_FILE": str(limited_metrics)})
    assert limited.returncode == 2, limited.stderr[-3000:]
    # DCP's writer thread prints its own traceback; the run's last word is goldtron's one-line error.
    err = limited.stderr.strip().splitlines()[-1]
    assert err.startswith("goldtron train: checkpoint error (rank 0): saving checkpoint iteration 4 into "
                          f"{save}/iter_0000004.in_progress failed: OSError"), limited.stderr[-3000:]
    assert "rank 0's data files hold " in err and f"file-size limit (ulimit -f) is {limit} bytes" in err, err
    assert "still names iteration 2" in err, err

    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
    assert {f.name: f.read_bytes() for f in (save / "iter_0000002").iterdir()} == before

    again_metrics = tmp_path / "again.jsonl"
    again = train_tiny(flags, env={"GOLDTRON_METRICS_FILE": str(again_metrics)})
    assert again.returncode == 0, again.stderr[-3000:]
    limited_steps, again_steps = read_metrics_file(limited_metrics), read_metrics_file(again_metrics)
    assert [s["iteration"] for s in again_steps] == [3, 4]
    for ours, ref in zip(again_steps, limited_steps, strict=True):
        assert [ours[k] for k in COMPARED] == [ref[k] for k in COMPARED], ours["iteration"]  # bit for bit
