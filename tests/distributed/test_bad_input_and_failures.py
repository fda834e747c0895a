"""Issue 2, tests 5-6: bad flags stop every rank with the flag and the fix (no hang), and a rank
killed mid-run takes the whole job down within 60 s."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.torchrun import FLAG_ERROR_MONITOR_INTERVAL_S, TINY_MODEL, free_port, layout_flags, run_train

BAD_INPUTS = {
    # name: (processes, extra flags, words the message must contain)
    "world size vs TP x PP": (4, layout_flags(3, 1), ["--tensor-model-parallel-size", "world size"]),
    "heads vs TP": (4, layout_flags(4, 1) + ["--num-attention-heads", "6"], ["--num-attention-heads"]),
    "layers vs PP": (4, layout_flags(1, 4) + ["--num-layers", "6"], ["--num-layers"]),
    "query groups vs TP": (4, layout_flags(4, 1) + ["--group-query-attention", "--num-query-groups", "2"],
                           ["--num-query-groups 2 is not divisible by --tensor-model-parallel-size 4"]),
    "global batch vs micro x DP": (4, ["--global-batch-size", "6"], ["--global-batch-size"]),
    "seq-length vs positions": (2, ["--seq-length", "64"], ["--max-position-embeddings"]),
    "unknown backend": (2, ["--distributed-backend", "mpi"], ["--distributed-backend"]),
    "unknown flag": (2, ["--no-such-flag"], ["--no-such-flag"]),
    "sample-based warmup with iterations": (2, ["--lr-warmup-samples", "16"],
                                            ["--lr-warmup-samples", "expected iteration-based learning rate"]),
    "sequence vs TP under sequence parallelism": (2, layout_flags(2, 1) + ["--sequence-parallel", "--seq-length", "31"],
                                                  ["--sequence-parallel", "--seq-length 31", "multiple of 2"]),
    "sequence vs context-parallel chunks": (2, ["--context-parallel-size", "2", "--seq-length", "30"],
                                            ["--seq-length 30", "2 x --context-parallel-size 2 = 4"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_on_every_rank(name):
    nproc, extra, words = BAD_INPUTS[name]
    result = run_train(nproc, TINY_MODEL + ["--train-iters", "2"] + extra, timeout=90, check=False,
                       monitor_interval=FLAG_ERROR_MONITOR_INTERVAL_S)
    assert result.returncode != 0
    for rank in range(nproc):
        assert f"error (rank {rank})" in result.stderr, (name, result.stderr[-2000:])
    for word in words:
        assert word in result.stderr, (name, word, result.stderr[-2000:])
    # torchrun prints its own traceback for a failed child; goldtron's code must not appear in one.
    assert 'goldtron/training/' not in result.stderr, "a configuration error must not be a crash"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_killed_rank_stops_the_job_within_60s(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--module", "goldtron", "train",
           *TINY_MODEL, *layout_flags(2, 2), "--train-iters", "100000"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GOLDTRON_METRICS_FILE=str(metrics))
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert job.poll() is None, "the job ended before it trained"
            assert time.monotonic() < deadline, "the job did not start training in 120 s"
            time.sleep(0.2)
        workers = _children(job.pid)
        assert len(workers) == 4, workers
        os.kill(workers[1], signal.SIGKILL)  # a middle rank, mid-step
        killed_at = time.monotonic()
        job.wait(timeout=60)
        assert time.monotonic() - killed_at <= 60
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
