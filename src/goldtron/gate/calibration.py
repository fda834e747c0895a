"""A fixed CPU workload the gate times on the machine it runs on, so that `iteration-time` can be
judged against a golden recorded on another, faster or slower, machine.

`iteration-time / calibration seconds` is a machine-independent unit: both scale with the
same core speed (fp32 GEMM throughput and memory bandwidth). The workload is the hot path of a
CPU-sized GPT step on one rank: a [512 x 128] x [128 x 25152] LM-head GEMM, log-softmax and
cross-entropy over it, and the two backward GEMMs, on one thread (goldtron's CPU cases pin one
thread per rank). It uses plain torch only, none of goldtron's trainer code, so a slower trainer
cannot slow it down: the trainer's regression shows in the ratio.

Run as `python -m goldtron.gate.calibration` (the gate does not import torch itself: that costs
seconds); it prints one JSON line {"workload": ..., "seconds": ...}. With `--serve` it times the
workload once per line read on stdin, until stdin closes: the gate's `Calibrator` keeps one such
process for all its timings, so torch is imported once (~1.5 s of a 2-core machine) rather than
once per timing.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
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


def timing(repeats: int = REPEATS) -> dict:
    return {"workload": WORKLOAD, "seconds": time_workload(repeats)}


class Calibrator:
    """Times the workload in a child process (the caller need not import torch), started at the first
    `measure()` and kept, blocked on its stdin, for the next ones; `close()` (or leaving the `with`
    block) ends it. Between timings it uses no CPU, so it cannot slow the phases it waits through."""

    def __init__(self, python: str = sys.executable):
        self._python = python
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._last_stderr = ""  # what the last child wrote to stderr, once it has ended

    def measure(self, repeats: int = REPEATS) -> dict:
        if self._process is None:
            self._stderr = tempfile.TemporaryFile(mode="w+")  # a file: a chatty child can never block on it
            # Its own session: a Ctrl-C meant for the gate's phases does not end it mid-protocol.
            self._process = subprocess.Popen([self._python, "-m", "goldtron.gate.calibration", "--serve"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                             text=True, start_new_session=True)
        try:
            self._process.stdin.write(f"{repeats}\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # it has died: the read below says why
        ready, _, _ = select.select([self._process.stdout], [], [], TIMEOUT_S)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            reason = "it exited" if ready else f"no timing within {TIMEOUT_S} s"
            self.close()
            raise RuntimeError(f"calibration workload failed: {reason}: {self._last_stderr}")
        return json.loads(line)

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._process.stdin.close()  # the served loop ends at end of input
            self._process.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        self._stderr.seek(0)
        self._last_stderr = self._stderr.read().strip()[-2000:]
        self._stderr.close()
        self._process = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve() -> None:
    """One timing per line of stdin (the line: how many repeats), each printed as a JSON line, until
    stdin closes."""
    for line in sys.stdin:
        print(json.dumps(timing(int(line))), flush=True)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else print(json.dumps(timing()))
