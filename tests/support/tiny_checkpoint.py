"""A real goldtron checkpoint in seconds: one process (no torchrun), a model of a few thousand
parameters, one step, Adam and RNG state saved. For tests that damage or craft checkpoint files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# --seq-length 64, not less: mock data is one epoch of ~205M tokens, indexed and shuffled whole at
# every start (Megatron's order), so a shorter sequence means more samples (seq 8: 25M, seconds).
TINY_FLAGS = [
    "--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "64",
    "--max-position-embeddings", "64", "--micro-batch-size", "1", "--global-batch-size", "2",
    "--lr", "1e-3", "--lr-decay-iters", "8", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
    "--log-interval", "1", "--log-num-zeros-in-grad", "--log-params-norm", "--torch-threads", "1", "--eval-iters", "0",
    "--deterministic-mode",
]


def train_tiny(flags: list[str], timeout: float = 120, env: dict | None = None,
               preexec_fn=None) -> subprocess.CompletedProcess:
    """`goldtron train` with TINY_FLAGS + `flags` in one process; the caller checks the result.
    `preexec_fn` runs in the child before the trainer starts (e.g. to set a resource limit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # alone, the trainer makes a one-rank group in memory
    return subprocess.run([sys.executable, "-m", "goldtron", "train", *TINY_FLAGS, *flags], capture_output=True,
                          text=True, timeout=timeout, env=env, preexec_fn=preexec_fn)


def save_tiny_checkpoint(save_dir: Path, iterations: int = 1) -> Path:
    result = train_tiny(["--train-iters", str(iterations), "--save", str(save_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir
