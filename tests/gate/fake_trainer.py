"""A stand-in for goldtron's trainer, so the gate's runner is tested end to end without it.

Run one process per rank under torchrun. It forms a real gloo process group, trains a
"loss" that follows a deterministic recurrence of --seed, --lr and the step (with a numpy
RNG whose state is checkpointed, so a resume continues bit for bit), all-reduces across
ranks, writes Megatron's TensorBoard tags from the last rank, prints Megatron's iteration
line, and saves/loads `iter_XXXXXXX/` + `latest_checkpointed_iteration.txt`.

Fault injection for the gate's error tests:
  --fake-crash-at-iteration K   rank 1 (or 0 in a 1-rank job) exits with code 3 at step K
  --fake-hang-at-iteration K    every rank sleeps forever at step K
  --fake-config-error           exit 2 with a message on stderr, like a rejected flag
  --fake-step-seconds S         busy time per step (the overhead benchmark's "training")
  --fake-sleep-seconds S        idle time per step (a long phase that leaves the cores free)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-iters", type=int, required=True)
    parser.add_argument("--tensorboard-dir", required=True)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--save-interval", type=int)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--fake-crash-at-iteration", type=int)
    parser.add_argument("--fake-hang-at-iteration", type=int)
    parser.add_argument("--fake-config-error", action="store_true")
    parser.add_argument("--fake-step-seconds", type=float, default=0.0)
    parser.add_argument("--fake-sleep-seconds", type=float, default=0.0)
    # Every other Megatron flag (--num-layers 12, --bf16, ...) is accepted and ignored.
    args, _ = parser.parse_known_args(argv)
    return args


def checkpoint_dir(root: str, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def save(root: str, iteration: int, rank: int, state: dict) -> None:
    directory = checkpoint_dir(root, iteration)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank_{rank}.json").write_text(json.dumps(state))
    dist.barrier()  # every shard is on disk before the tracker names the iteration
    if rank == 0:
        (Path(root) / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    dist.barrier()


def load(root: str | None, rank: int) -> dict | None:
    if not root:
        return None
    tracker = Path(root) / "latest_checkpointed_iteration.txt"
    if not tracker.exists():
        return None  # Megatron starts from scratch when --load holds no checkpoint
    iteration = int(tracker.read_text().strip())
    return json.loads((checkpoint_dir(root, iteration) / f"rank_{rank}.json").read_text())


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.fake_config_error:
        print("configuration error: --fake-config-error was given; remove it", file=sys.stderr)
        return 2
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    last_rank = rank == world - 1

    state = load(args.load, rank)
    if state is None:
        rng = np.random.RandomState(args.seed + rank)
        loss, start = 10.8 + (args.seed % 7) * 0.01, 0
    else:
        rng = np.random.RandomState()
        rng.set_state(tuple(state["rng"][:1]) + (np.array(state["rng"][1], dtype=np.uint32),) + tuple(state["rng"][2:]))
        loss, start = state["loss"], state["iteration"]

    writer = None
    if last_rank:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(args.tensorboard_dir)
    for iteration in range(start + 1, args.train_iters + 1):
        began = time.perf_counter()
        if args.fake_crash_at_iteration == iteration and rank == min(1, world - 1):
            print(f"RuntimeError: injected crash at iteration {iteration} on rank {rank}", file=sys.stderr, flush=True)
            # Leave at once, as a crash does: a normal exit tears down gloo's threads while the
            # group is live, and that teardown sometimes aborts (seen: SIGABRT, "terminate called
            # without an active exception") instead of exiting with the injected code.
            sys.stdout.flush()
            os._exit(3)
        if args.fake_hang_at_iteration == iteration:
            time.sleep(3600)
        while time.perf_counter() - began < args.fake_step_seconds:
            pass
        time.sleep(args.fake_sleep_seconds)
        # The "loss": decays with lr, plus rank-specific noise averaged over ranks (a real all-reduce).
        noise = torch.tensor([rng.standard_normal() * 0.02, float(rng.randint(0, 50))], dtype=torch.float64)
        dist.all_reduce(noise)
        loss = loss * (1.0 - 50.0 * args.lr) + noise[0].item() / world
        num_zeros = noise[1].item()
        elapsed = time.perf_counter() - began
        if writer is not None:
            writer.add_scalar("lm loss", loss, iteration)
            writer.add_scalar("num-zeros", num_zeros, iteration)
            writer.add_scalar("learning-rate", args.lr, iteration)
            writer.add_scalar("mem-allocated-bytes", 1.0e6 + 1000.0 * world, iteration)
            writer.add_scalar("mem-max-allocated-bytes", 2.0e6 + 1000.0 * world, iteration)
            if iteration > start + 1:  # Megatron writes no iteration-time for a run's first step
                writer.add_scalar("iteration-time", elapsed, iteration)
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f" [{stamp}] iteration {iteration:8d}/{args.train_iters:8d} | consumed samples: "
                  f"{iteration * args.global_batch_size:12d} | elapsed time per iteration (ms): {1000 * elapsed:.1f} | "
                  f"learning rate: {args.lr:.6E} | global batch size: {args.global_batch_size:5d} | "
                  f"lm loss: {loss:.6E} | num zeros: {num_zeros:.1f} |", flush=True)
        if args.save and args.save_interval and (iteration % args.save_interval == 0 or iteration == args.train_iters):
            rng_state = rng.get_state()
            save(args.save, iteration, rank, {"iteration": iteration, "loss": loss,
                                              "rng": [rng_state[0], rng_state[1].tolist(), *rng_state[2:]]})
    if writer is not None:
        writer.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
