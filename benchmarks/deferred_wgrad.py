"""Deferred LM-head weight-gradient on TP2 x PP2 with the GPT-2 vocabulary: the last stage's idle
time in the pipeline flush, and the step time, without and with deferral, side by side.

    python benchmarks/deferred_wgrad.py [--steps 8] [--warmup 2] [--repeats 2] [--limit 0]

Runs `goldtron train` under torchrun (4 gloo ranks) with --log-timers-to-tensorboard, alternating
plain / deferred launches (--repeats pairs; this machine is shared, so the two are measured
under the same load and medians are compared), and reads each rank's step trace.

Flush idle of the last stage, per step: on one clock (CLOCK_MONOTONIC, shared by the processes),
the flush ends when the last backward of any rank ends (the first stage's cooldown); the last
stage's idle time in it is that end minus the end of its own last backward, less the drain it ran
in that window. Deferral moves the LM-head wgrad GEMMs out of the last stage's backwards (which
the other stages wait on) into that window. Step time is the logging rank's iteration time.

Prints both ratios (deferred / plain); docs/deferral.md says what a 2-core machine can show.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from goldtron.training import timeline

FLAGS = [
    "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
    "--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4",
    "--seq-length", "256", "--max-position-embeddings", "256",
    "--micro-batch-size", "2", "--global-batch-size", "8",  # 4 micro-batches per step
    # GPT-2's vocabulary size without files: 50256 + end-of-document = 50257 ids.
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "50256",
    "--lr", "1e-4", "--lr-decay-style", "constant", "--eval-iters", "0", "--log-interval", "1000000",
    "--torch-threads", "1", "--log-timers-to-tensorboard",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tb_dir: Path, steps: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--module", "goldtron", "train", *FLAGS,
           "--train-iters", str(steps), "--tensorboard-dir", str(tb_dir), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-4000:]}")


def step_figures(tb_dir: Path, iteration: int) -> tuple[float, float]:
    """(last stage's idle seconds in the flush, step seconds) of one step."""
    _, steps = timeline.read_step(timeline.trace_folder(tb_dir), iteration)
    boxes = timeline.boxes_of(steps)
    last_pp = max(s.pp_rank for s in steps)
    last_ranks = [s.rank for s in steps if s.pp_rank == last_pp]
    flush_end = max(b.end for b in boxes if b.kind == "backward")
    idle = []
    for rank in last_ranks:
        mine = [b for b in boxes if b.rank == rank]
        own_end = max(b.end for b in mine if b.kind == "backward")
        drained = sum(min(b.end, flush_end) - b.start for b in mine if b.kind == "wgrad-drain" and b.start < flush_end)
        idle.append(max(0.0, flush_end - own_end - drained))
    logging_rank = max(s.rank for s in steps)
    lines = (tb_dir / "pipeline_trace" / f"rank{logging_rank}.jsonl").read_text().splitlines()
    record = next(r for r in map(json.loads, lines) if r["iteration"] == iteration)
    return statistics.mean(idle), record["end"] - record["start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--repeats", type=int, default=2, help="plain/deferred launch pairs")
    parser.add_argument("--limit", type=int, default=0, help="--wgrad-deferral-limit of the deferred run")
    parser.add_argument("--timeline", type=Path, default=None, help="also draw the last step of both as a PNG")
    o = parser.parse_args()

    variants = {"plain": [], "deferred": ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", str(o.limit)]}
    figures = {name: {"idle": [], "step": []} for name in variants}
    work = Path(tempfile.mkdtemp(prefix="deferred_wgrad_"))
    try:
        for repeat in range(o.repeats):
            for name, extra in variants.items():
                tb = work / f"{name}{repeat}"
                launch(tb, o.steps, extra)
                for iteration in range(o.warmup + 1, o.steps + 1):
                    idle, step = step_figures(tb, iteration)
                    figures[name]["idle"].append(idle)
                    figures[name]["step"].append(step)
        if o.timeline:
            timeline.draw([(f"{name} - iteration {o.steps}", timeline.read_step(
                timeline.trace_folder(work / f"{name}0"), o.steps)[1]) for name in variants], o.timeline)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: {k: statistics.median(v) * 1e3 for k, v in f.items()} for name, f in figures.items()}
    samples = len(figures["plain"]["step"])
    print(f"TP2xPP2, vocab 50257, 4 micro-batches, limit {o.limit}; medians of {samples} steps per side (ms)")
    print(f"{'':34}{'plain':>10}{'deferred':>10}{'ratio':>8}")
    for key, label in (("idle", "last stage idle in pipeline flush"), ("step", "step time")):
        p, d = median["plain"][key], median["deferred"][key]
        print(f"{label:34}{p:10.1f}{d:10.1f}{d / p if p else float('nan'):8.2f}")


if __name__ == "__main__":
    main()
