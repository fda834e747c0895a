"""What goldtron's CPU memory counter (training/memory.py, on under --log-memory-to-tensorboard)
adds to the ops it watches: the same forward/backward with and without it, alternating, in one
process.

The counter is a TorchDispatchMode: every aten op of the step, views and backward ops included,
goes through Python once more. The workload is a small transformer (torch's own layers, hidden
128, 4 heads, seq 256, micro-batch 2, 4 micro-batches, one thread): an op mix like a goldtron
rank's, whose ops are small enough for the per-op cost to show.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from goldtron.training.memory import CpuAllocationCounter


class OpCount(TorchDispatchMode):
    """How many aten ops the step runs: each one the counter sees."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternations of (no counter, counter)")
    parser.add_argument("--micro-batches", type=int, default=4)
    o = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True, norm_first=True),
        num_layers=2, enable_nested_tensor=False)
    x = torch.randn(2, 256, 128)

    def step() -> None:
        for _ in range(o.micro_batches):
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(o.rounds):
        for name in times:
            counter = CpuAllocationCounter() if name == "with" else contextlib.nullcontext()
            started = time.perf_counter()
            with counter:
                step()
            times[name].append(time.perf_counter() - started)

    with OpCount() as count:
        step()
    ops = count.ops
    without, with_counter = (statistics.median(times[name]) for name in ("without", "with"))
    print(f"{o.micro_batches} micro-batches of a 2-layer transformer, fwd + bwd, 1 thread: {ops} aten ops, "
          f"{o.rounds} alternating rounds")
    print(f"  without the counter  median {without * 1e3:8.2f} ms")
    print(f"  with the counter     median {with_counter * 1e3:8.2f} ms")
    print(f"  ratio {with_counter / without:.3f}; {(with_counter - without) / ops * 1e6:.2f} us per op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
