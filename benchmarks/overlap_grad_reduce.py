"""How much of the DP gradient reduction --overlap-grad-reduce hides behind backward, side by side.

One torchrun launch of DP2 (gloo, one thread per rank) builds two trainers of the same model on
the same process groups, one without and one with --overlap-grad-reduce, and alternates their
steps (A, B, A, B, ...) so machine load hits both alike. Per step it times the call that makes
the gradients final (`optimizer.reduce_gradients`): without overlap it is the whole reduction;
with it, only what backward did not hide (waiting for the buckets still in flight, and those that
could only start at the end). Printed, medians over the steps after `--skip`:

    hidden share = 1 - exposed reduce (overlap) / whole reduce (plain)

and both step times. The tied word embedding's gradient is final only when backward reaches the
embedding, its last operation, so its bucket cannot overlap anything; `--untie` gives the LM head
its own weight, whose gradient is final first.

    python benchmarks/overlap_grad_reduce.py [--untie] [--bucket 2000000] [--steps 12] [--skip 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def model_flags(o: argparse.Namespace) -> list[str]:
    flags = [
        "--num-layers", str(o.layers), "--hidden-size", str(o.hidden), "--num-attention-heads", str(o.heads),
        "--seq-length", str(o.seq), "--max-position-embeddings", str(o.seq),
        "--micro-batch-size", str(o.micro_batch), "--global-batch-size", str(o.global_batch),
        "--mock-data", "--train-iters", str(2 * o.steps), "--eval-iters", "0",
        "--lr", "1e-4", "--lr-decay-style", "constant", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--log-interval", "1000000", "--torch-threads", "1", "--deterministic-mode",
    ]
    return flags + (["--untie-embeddings-and-output-weights"] if o.untie else [])


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--bucket", type=int, default=2_000_000, help="--ddp-bucket-size of the overlapped run")
    p.add_argument("--untie", action="store_true", help="--untie-embeddings-and-output-weights")
    p.add_argument("--steps", type=int, default=12, help="steps of each trainer")
    p.add_argument("--skip", type=int, default=2, help="first steps of each left out (warm-up)")
    return p.parse_args(argv)


def worker(o: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from goldtron.arguments import parse_args
    from goldtron.parallel.state import ParallelState
    from goldtron.training.build import build_trainer, configure_torch

    dist.init_process_group("gloo")
    flags = model_flags(o)
    variants = {"plain": flags, "overlap": flags + ["--overlap-grad-reduce", "--ddp-bucket-size", str(o.bucket)]}
    args = {name: parse_args(f, world_size=dist.get_world_size()) for name, f in variants.items()}
    configure_torch(args["plain"])
    ps = ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    trainers, reduce_s, step_s, losses = {}, {}, {}, {}
    for name, a in args.items():
        trainer = build_trainer(a, ps, torch.device("cpu"))
        inner = trainer.optimizer.reduce_gradients

        def timed(inner=inner, name=name):
            start = time.perf_counter()
            inner()
            reduce_s[name].append(time.perf_counter() - start)

        trainer.optimizer.reduce_gradients = timed
        trainers[name], reduce_s[name], step_s[name], losses[name] = trainer, [], [], []
    for _ in range(o.steps):
        for name, trainer in trainers.items():
            values = trainer.train_step()
            step_s[name].append(values["iteration_time"])
            losses[name].append(values["lm_loss"])
    if dist.get_rank() == 0:
        med = {name: {k: statistics.median(v[o.skip:]) for k, v in (("reduce", reduce_s[name]), ("step", step_s[name]))}
               for name in trainers}
        buckets = len(trainers["overlap"].optimizer.overlapped.buckets)
        params = sum(p.numel() for p in trainers["plain"].model.parameters())
        print(f"DP2, {params / 1e6:.1f}M parameters, {'untied' if o.untie else 'tied'} embedding, "
              f"{buckets} buckets of >= {o.bucket} elements; medians of steps {o.skip + 1}..{o.steps}")
        print(f"  whole reduce (plain)     {1e3 * med['plain']['reduce']:8.1f} ms   step {1e3 * med['plain']['step']:8.1f} ms")
        print(f"  exposed reduce (overlap) {1e3 * med['overlap']['reduce']:8.1f} ms   step {1e3 * med['overlap']['step']:8.1f} ms")
        print(f"  hidden share {1 - med['overlap']['reduce'] / med['plain']['reduce']:.0%}, step time ratio "
              f"overlap/plain {med['overlap']['step'] / med['plain']['step']:.3f}")
        print(f"  lm loss identical every step: {losses['plain'] == losses['overlap']}")
    trainers.clear()
    dist.destroy_process_group()


def main() -> None:
    if "RANK" in os.environ:
        worker(parse(sys.argv[1:]))
        return
    parse(sys.argv[1:])  # --help and bad flags before the launch
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", str(Path(__file__).resolve()), *sys.argv[1:]]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


if __name__ == "__main__":
    main()
