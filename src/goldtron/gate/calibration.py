"""A fixed CPU workload the gate times on the machine it runs on, so that `iteration-time` can be
judged against a golden recorded on another, faster or slower, machine.

`iteration-time / calibration seconds` is a machine-independent unit: both scale with the
same core speed (fp32 GEMM throughput and memory bandwidth). The workload is the hot path of a
CPU-sized GPT step on one rank: a [512 x 128] x [128 x 25152] LM-head GEMM, log-softmax and
cross-entropy over it, and the two backward GEMMs, on one thread (goldtron's CPU cases pin one
thread per rank). It uses plain torch only, none of goldtron's trainer code, so a slower trainer
cannot slow it down: the trainer's regression shows in the ratio.

Run as `python -m goldtron.gate.calibration` (the gate does not import torch itself: that costs
seconds); it prints one JSON line {"workload": ..., "seconds": ...}. With `--serve` it prints one
such line per line read from stdin (the gate's Calibrator: one helper for both timings).
"""

from __future__ import annotations

import json
import select
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


class Calibrator:
    """Times the workload in one helper process, before and after a case's phases.

    The helper imports torch once and sleeps on its stdin between the two timings (no CPU taken
    from the phases), so the second timing costs the passes only, not another interpreter start
    and torch import (~2 s of the main command's ~10 s of calibration). Started on the first
    timing; `close` (or the gate's exit: the helper ends at the end of its stdin) ends it.
    """

    def __init__(self, python: str = sys.executable):
        self.python = python
        self.process: subprocess.Popen | None = None
        self._stderr = ""  # the helper's last words, read when it ends

    def __enter__(self) -> "Calibrator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def time(self) -> dict:
        if self.process is None:
            self.process = subprocess.Popen([self.python, "-m", "goldtron.gate.calibration", "--serve"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
        try:
            self.process.stdin.write("time\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the helper died: reading says how
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            process = self.process
            if not ready:
                process.kill()
            self.close()
            why = f"the helper ended (exit {process.returncode})" if ready else f"no timing within {TIMEOUT_S} s"
            raise RuntimeError(f"calibration workload failed: {why}" + (f": {self._stderr}" if self._stderr else ""))
        return json.loads(line)

    def close(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            _, err = process.communicate(timeout=TIMEOUT_S)  # closes its stdin: the helper's end
        except BrokenPipeError:
            _, err = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        self._stderr = (err or "").strip()[-2000:]


def serve() -> None:
    """The helper: one JSON timing line per line read, until its stdin ends."""
    while sys.stdin.readline():
        print(json.dumps({"workload": WORKLOAD, "seconds": time_workload()}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        print(json.dumps({"workload": WORKLOAD, "seconds": time_workload()}))
