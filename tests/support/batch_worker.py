"""Rank worker: several `goldtron train` runs of one world size in one launch.

A 4-rank torchrun start costs ~13 CPU-seconds on a 2-core machine (five Python processes import
torch, and torch.optim imports torch._dynamo), more than ten steps of the tiny model do. Tests
that compare many runs launch those of one world size together. Each run is built from its own
flags as `goldtron train` builds it (seeds, data, model, optimizer, schedule), on process groups
made once per layout, and writes its own metrics file; nothing but the groups outlives a run.

usage: goldtron launch --nproc-per-node N --script batch_worker.py -- SPEC.json   (run_script; torchrun works too)
SPEC: {"runs": {"name": {"flags": [...], "metrics": "DIR/metrics.jsonl"}, ...}}
Each rank's stdout during a run goes to DIR/stdout.rank{R}.log (what torchrun would have shown).
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from goldtron.arguments import parse_args
from goldtron.parallel.state import ParallelState
from goldtron.training.build import configure_torch, train_on
from goldtron.training.fast_exit import exit_now
from goldtron.training.metrics_file import MetricsFile


def train_one(flags: list[str], metrics: str, groups: dict) -> None:
    args = parse_args(flags, world_size=dist.get_world_size())
    layout = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    context = (args.context_parallel_size, tuple(args.hierarchical_context_parallel_sizes or ()))
    key = (*layout, args.use_tp_pp_dp_mapping, *context)  # the rank order makes other groups of the same sizes
    if key not in groups:
        groups[key] = ParallelState.create(*layout, torch.device("cpu"), "gloo", args.use_tp_pp_dp_mapping,
                                           context[0], list(context[1]))
    configure_torch(args)
    train_on(args, groups[key], torch.device("cpu"), MetricsFile(metrics))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    groups: dict = {}
    for name, run in spec["runs"].items():
        log = Path(run["metrics"]).with_name(f"stdout.rank{dist.get_rank()}.log")
        try:
            with open(log, "w") as out, contextlib.redirect_stdout(out):
                train_one(run["flags"], run["metrics"], groups)
        except Exception:
            print(f"batch_worker: run {name!r} failed on rank {dist.get_rank()}", file=sys.stderr, flush=True)
            raise
    groups.clear()
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now(0)  # the batch is this process's whole work: skip the interpreter's teardown
