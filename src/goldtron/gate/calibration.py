"""A fixed CPU workload the gate times on the machine it runs on, so that `iteration-time` can be
judged against a golden recorded on another, faster or slower, machine.

`iteration-time / calibration seconds` is a machine-independent unit: both scale with the
same core speed (fp32 GEMM throughput and memory bandwidth). The workload is the hot path of a
CPU-sized GPT step on one rank: a [512 x 128] x [128 x 25152] LM-head GEMM, log-softmax and
cross-entropy over it, and the two backward GEMMs, on one thread (goldtron's CPU cases pin one
thread per rank). It uses plain torch only, none of goldtron's trainer code, so a slower trainer
cannot slow it down: the trainer's regression shows in the ratio.

Run as `python -m goldtron.gate.calibration` (the gate does not import torch itself: that costs
seconds); it prints one JSON line {"workload": ..., "seconds": ...}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

WORKLOAD = "lm-head-512x128x25152-fp32-1thread-v1"
TOKENS, HIDDEN, VOCAB_SHARD = 512, 128, 25152
REPEATS = 9
TIMEOUT_S = 300


def time_workload(repeats: int = REPEATS) -> float:
    """Fastest of `repeats` forward + backward passes of the LM-head workload (after one warm-up):
    the minimum is what the machine can do; a moment of contention only slows some passes."""
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator, requires_grad=True)
    weight = (torch.randn(VOCAB_SHARD, HIDDEN, generator=generator) * 0.02).requires_grad_()
    labels = torch.randint(0, VOCAB_SHARD, (TOKENS,), generator=generator)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels)
        loss.backward()
        times.append(time.perf_counter() - started)
        hidden.grad = weight.grad = None
    return min(times[1:])


def faster(first: dict | None, second: dict | None) -> dict | None:
    """Two timings of the workload (before and after a case's phases): the faster one. A single
    timing can land in a busy moment (seen: 0.32 s instead of 0.23 s right after the phases, which
    let a 2x slower trainer pass); the machine's speed is what the faster one shows."""
    timings = [timing for timing in (first, second) if timing is not None]
    return min(timings, key=lambda timing: timing["seconds"]) if timings else None


def measure(python: str = sys.executable) -> dict:
    """Time the workload in a fresh process (the caller need not import torch)."""
    result = subprocess.run([python, "-m", "goldtron.gate.calibration"], capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"calibration workload failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps({"workload": WORKLOAD, "seconds": time_workload()}))
