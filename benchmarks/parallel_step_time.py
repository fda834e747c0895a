"""Step time of TP2 x PP2 on 4 processes vs one process, same model and global batch, side by side.

The two runs alternate (one process, 4 processes, one process, ...) so machine load hits both
alike; each is a real `goldtron train` with `--log-timers-to-tensorboard`, and everything here is
read from the per-rank `pipeline_trace/rank{r}.jsonl` files it writes (times relative to each
rank's step start; starts are perf_counter, one clock for every process on the machine).

Per step of the 4-process run, each rank's time splits into
  compute        forward + backward + wgrad-drain + optimizer (TP all-reduces inside forward and
                 backward are counted here: the trace cannot separate them)
  communication  p2p-wait + grad-reduce (grad-reduce = DP/embedding all-reduces, norm, clipping)
  idle           the rest of the step (outside every span)
p2p-wait is where a stage waits for its neighbour, so it holds the pipeline bubble as well as the
transfer itself. Also printed: the loss of both runs per step (they must agree: layout equality).

    python benchmarks/parallel_step_time.py [--rounds 2] [--iters 6] [--skip 2]

On a 2-core machine 4 processes cannot be faster than 1 process using both cores; see
docs/performance.md for what the ratio does show.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COMPUTE = ("forward", "backward", "wgrad-drain", "optimizer")
COMMUNICATION = ("p2p-wait", "grad-reduce")


def model_flags(o: argparse.Namespace) -> list[str]:
    flags = [
        "--num-layers", str(o.layers), "--hidden-size", str(o.hidden), "--num-attention-heads", str(o.heads),
        "--seq-length", str(o.seq), "--max-position-embeddings", str(o.seq),
        "--micro-batch-size", str(o.micro_batch), "--global-batch-size", str(o.global_batch),
        "--mock-data", "--train-iters", str(o.iters), "--eval-iters", "0",
        "--lr", "1e-4", "--lr-decay-style", "constant",
        # Dropout off: the same computation under both layouts (dropout streams differ per TP rank).
        "--hidden-dropout", "0", "--attention-dropout", "0",
        "--log-interval", "1000000", "--log-timers-to-tensorboard",
    ]
    return flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, nproc: int, flags: list[str], timeout: float) -> None:
    """One `goldtron train` (under torchrun when nproc > 1) writing its traces under out/tb."""
    out.mkdir(parents=True)
    flags = flags + ["--tensorboard-dir", str(out / "tb")]
    if nproc == 1:
        cmd = [sys.executable, "-m", "goldtron", "train", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
               "--module", "goldtron", "train", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", GOLDTRON_METRICS_FILE=str(out / "metrics.jsonl"))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")


def read_traces(out: Path) -> dict[int, dict[int, dict]]:
    """{iteration: {rank: record}} from every rank's trace file."""
    steps: dict[int, dict[int, dict]] = {}
    for path in sorted((out / "tb" / "pipeline_trace").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["iteration"], {})[record["rank"]] = record
    return steps


def read_losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["lm_loss"] for r in map(json.loads, lines)}


def step_wall(ranks: dict[int, dict]) -> float:
    """First start to last end over all ranks: the step as the whole job sees it."""
    return max(r["end"] for r in ranks.values()) - min(r["start"] for r in ranks.values())


def rank_split(record: dict) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for kind, _, t0, t1, *_ in record["spans"]:  # [kind, micro-batch, start, end, chunk] (trace.py)
        seconds[kind] = seconds.get(kind, 0.0) + (t1 - t0)
    compute = sum(seconds.get(k, 0.0) for k in COMPUTE)
    communication = sum(seconds.get(k, 0.0) for k in COMMUNICATION)
    total = record["end"] - record["start"]
    return {"compute": compute, "communication": communication, "p2p-wait": seconds.get("p2p-wait", 0.0),
            "grad-reduce": seconds.get("grad-reduce", 0.0), "idle": max(0.0, total - compute - communication),
            "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternations of (1 process, 4 processes)")
    parser.add_argument("--iters", type=int, default=6, help="training steps per run")
    parser.add_argument("--skip", type=int, default=2, help="first steps of each run left out (warm-up)")
    parser.add_argument("--threads-single", type=int, default=2, help="--torch-threads of the 1-process run")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--defer-wgrad", action="store_true", help="the TP2 x PP2 run as the flagship: deferral limit 2")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    o = parser.parse_args()
    if o.iters <= o.skip:
        parser.error("--iters must be larger than --skip")

    flags = model_flags(o)
    single_flags = flags + ["--torch-threads", str(o.threads_single)]
    parallel_flags = flags + ["--torch-threads", "1", "--tensor-model-parallel-size", "2",
                              "--pipeline-model-parallel-size", "2"]
    if o.defer_wgrad:  # the pipelined run only: deferral hides dW in the pipeline flush, which PP 1 lacks
        parallel_flags += ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "2"]
    single_walls, parallel_walls, splits, loss_diffs = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="goldtron_parallel_bench_") as scratch:
        for k in range(o.rounds):
            single_out, parallel_out = Path(scratch) / f"single{k}", Path(scratch) / f"tp2pp2_{k}"
            run(single_out, 1, single_flags, o.timeout)
            run(parallel_out, 4, parallel_flags, o.timeout)
            single, parallel = read_traces(single_out), read_traces(parallel_out)
            timed = range(o.skip + 1, o.iters + 1)
            single_walls += [step_wall(single[i]) for i in timed]
            parallel_walls += [step_wall(parallel[i]) for i in timed]
            splits += [rank_split(parallel[i][r]) | {"rank": r} for i in timed for r in parallel[i]]
            ours, ref = read_losses(parallel_out), read_losses(single_out)
            loss_diffs += [abs(ours[i] - ref[i]) / abs(ref[i]) for i in ref]

    one, four = statistics.median(single_walls), statistics.median(parallel_walls)
    print(f"model: {o.layers} layers, hidden {o.hidden}, {o.heads} heads, seq {o.seq}, GPT-2 vocab, micro-batch "
          f"{o.micro_batch}, global batch {o.global_batch}, fp32, dropout 0, deferral {'limit 2' if o.defer_wgrad else 'off'}")
    print(f"runs: {o.rounds} x (1 process with {o.threads_single} threads, TP2xPP2 on 4 processes with 1 thread each), "
          f"alternating; {o.iters} steps each, first {o.skip} left out; {os.cpu_count()} CPU cores")
    print(f"  lm loss TP2xPP2 vs 1 process: max rel diff {max(loss_diffs):.1e} (same computation)")
    print(f"  1 process   median step {one * 1000:8.1f} ms")
    print(f"  TP2 x PP2   median step {four * 1000:8.1f} ms")
    print(f"  ratio TP2xPP2 / 1 process: {four / one:.3f}")
    print("  TP2xPP2 split per rank (median ms per step, % of that rank's step):")
    for rank in sorted({s["rank"] for s in splits}):
        mine = [s for s in splits if s["rank"] == rank]
        median = {key: statistics.median(s[key] for s in mine) for key in mine[0] if key != "rank"}
        parts = ", ".join(f"{key} {median[key] * 1000:.0f} ({100 * median[key] / median['total']:.0f}%)"
                          for key in ("compute", "p2p-wait", "grad-reduce", "idle"))
        print(f"    rank {rank} (pp {rank // 2}, tp {rank % 2}): {parts}")
    mean = {key: statistics.mean(s[key] for s in splits) for key in ("compute", "communication", "idle", "total")}
    print(f"  all ranks: compute {100 * mean['compute'] / mean['total']:.0f}%, communication (p2p-wait incl. "
          f"bubble + grad-reduce) {100 * mean['communication'] / mean['total']:.0f}%, idle "
          f"{100 * mean['idle'] / mean['total']:.0f}%")
    bubble = 1 / (o.global_batch // o.micro_batch + 1)  # (P-1)/(M+P-1) with P = 2
    print(f"  1F1B bubble in theory, P=2, M={o.global_batch // o.micro_batch}: {100 * bubble:.0f}% of a stage's step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
