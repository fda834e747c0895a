"""torch_dist checkpoint speed against torch.save/torch.load of the same bytes, side by side.

One process (world size 1), a GPT of about 100M parameters with Adam state (3 x 4 bytes per
parameter: weights, exp_avg, exp_avg_sq = ~1.2 GB), written to the same disk both ways:
- save: goldtron's Checkpointer.save (DCP, fsynced, in-progress folder + rename + tracker) vs
  torch.save of the same tensors into one file, then fsync (the same durability);
- load: Checkpointer.load into the live model and optimizer vs torch.load + copy into them;
- async: the time `save` blocks the training loop with --async-save (the snapshot copy) against
  the whole synchronous save: the hidden share is 1 - blocked / synchronous.
Ratios are reference time / goldtron time (>= 1: goldtron is as fast or faster; target >= 0.8).
Each figure is the median of --repeats runs, the two sides interleaved (this machine is shared
and noisy; absolute times do not travel, ratios measured side by side do).

    python benchmarks/checkpoint_save_load.py [--layers 9 --hidden 768 --vocab 50257 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

from goldtron.arguments import parse_args
from goldtron.checkpoint.rng_state import RankRandomState
from goldtron.model.gpt import GPTStage
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState
from goldtron.training.checkpointer import CheckpointParts, build_checkpointer
from goldtron.training.lr_schedule import LRSchedule
from goldtron.training.optimizer import build_optimizer
from goldtron.training.progress import TrainingProgress


def _trainer(opts, save_dir: str, async_save: bool):
    flags = ["--num-layers", str(opts.layers), "--hidden-size", str(opts.hidden), "--num-attention-heads", str(opts.hidden // 64),
             "--seq-length", "128", "--max-position-embeddings", "1024", "--micro-batch-size", "1",
             "--global-batch-size", "1", "--train-iters", "10", "--lr", "1e-4", "--mock-data",
             "--tokenizer-type", "NullTokenizer", "--vocab-size", str(opts.vocab - 1), "--torch-threads", "2",
             "--save", save_dir, "--load", save_dir] + (["--async-save"] if async_save else [])
    args = parse_args(flags)
    ps = ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    rng = DropoutRNG(args.seed, 0, 0, ps.device)
    model = GPTStage(args, ps, rng)
    optimizer = build_optimizer(model, args, ps)
    for p in model.parameters():  # one step, so Adam state exists (3 tensors per parameter)
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    schedule = LRSchedule(args.lr, args.min_lr, args.lr_warmup_samples, args.lr_decay_samples, args.lr_decay_style)
    progress = TrainingProgress(iteration=1, consumed_samples=1)
    trainer = SimpleNamespace(args=args, model=model, optimizer=optimizer, progress=progress)
    return trainer, build_checkpointer(args, ps, CheckpointParts(model, optimizer, schedule, progress,
                                                                 RankRandomState(rng)))


def _training_work(trainer, micro_batches: int = 4) -> None:
    """Forward and backward of a few micro-batches of random tokens: the part of a training step
    that runs between a save and the next optimizer step (gradients only; weights untouched)."""
    args, model = trainer.args, trainer.model
    generator = torch.Generator().manual_seed(0)
    for _ in range(micro_batches):
        tokens = torch.randint(0, args.real_vocab_size, (1, args.seq_length), generator=generator)
        positions = torch.arange(args.seq_length).unsqueeze(0)
        model.loss(model(tokens, positions), tokens).mean().backward()


def _plain_tensors(trainer) -> dict:
    """The same tensors a checkpoint holds, as one torch.save-able dict."""
    out = {}
    for name, p in trainer.model.named_parameters():
        out[name] = p.detach()
        for kind in ("exp_avg", "exp_avg_sq", "step"):
            out[f"{kind}.{name}"] = trainer.optimizer.state[p][kind]
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _torch_save(tensors: dict, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(tensors, f)
        f.flush()
        os.fsync(f.fileno())


def _torch_load(tensors: dict, path: str) -> None:
    loaded = torch.load(path, map_location="cpu")
    with torch.no_grad():
        for key, value in tensors.items():
            value.copy_(loaded[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    opts = parser.parse_args()
    torch.set_num_threads(2)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    root = tempfile.mkdtemp(prefix="goldtron-ckpt-bench-", dir=opts.dir)
    try:
        trainer, ckpt = _trainer(opts, os.path.join(root, "dcp"), async_save=False)
        tensors = _plain_tensors(trainer)
        params = sum(p.numel() for p in trainer.model.parameters())
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"model: {params / 1e6:.1f}M parameters; with Adam state {nbytes / 2**30:.2f} GiB per save")
        plain = os.path.join(root, "plain.pt")
        times = {k: [] for k in ("dcp_save", "torch_save", "dcp_load", "torch_load", "async_blocked")}
        for i in range(opts.repeats):
            trainer.progress.iteration = 10 + i
            times["torch_save"].append(_timed(lambda: _torch_save(tensors, plain)))
            times["dcp_save"].append(_timed(lambda: ckpt.save()))
            times["torch_load"].append(_timed(lambda: _torch_load(tensors, plain)))
            times["dcp_load"].append(_timed(lambda: ckpt.load()))
        ckpt.close()

        trainer_async, ckpt_async = _trainer(opts, os.path.join(root, "async"), async_save=True)
        for i in range(opts.repeats):
            trainer_async.progress.iteration = 10 + i
            blocked_before = ckpt_async.blocked_seconds
            ckpt_async.save()
            # The loop's forward and backward run before its optimizer step, which waits for the
            # background copy: one training step's worth of compute stands in for them here.
            _training_work(trainer_async)
            ckpt_async.before_optimizer_step()
            times["async_blocked"].append(ckpt_async.blocked_seconds - blocked_before)
            ckpt_async.wait()  # outside the timing: the loop would be training meanwhile
        ckpt_async.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        dist.destroy_process_group()

    med = {k: statistics.median(v) for k, v in times.items()}
    gib = nbytes / 2**30
    print(f"{'':8} {'goldtron (DCP)':>16} {'torch.save/load':>16} {'ratio ref/ours':>15}")
    for op in ("save", "load"):
        ours, ref = med[f"dcp_{op}"], med[f"torch_{op}"]
        print(f"{op:8} {ours:10.2f} s {gib / ours:4.1f}GB/s {ref:10.2f} s {gib / ref:4.1f}GB/s {ref / ours:15.2f}")
    hidden = 1.0 - med["async_blocked"] / med["dcp_save"]
    print(f"async save: the loop blocks {med['async_blocked']:.2f} s of a {med['dcp_save']:.2f} s save: "
          f"{hidden:.0%} hidden")


if __name__ == "__main__":
    main()
