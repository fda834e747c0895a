"""torchrun worker for the deferral tests: several training runs in one launch, one JSON per run and rank.

A torchrun start costs seconds on this machine, and the equality tests need a non-deferred run
and five deferred ones per layout; building each trainer on the same process groups keeps a
whole layout to one launch. Each run records, per step, what `goldtron train` would log
(lm loss, grad-norm, memory) plus what only the process can see: how many micro-batches the
buffer kept, whether it is empty after the step, how many bytes it held at most, and where the
drain ran in the step's trace. The output-layer gradient right after the first step's drain is
saved too (last stage), before DP/embedding reduction and clipping mix other ranks in.

usage: torchrun ... deferral_worker.py SPEC.json OUT_DIR
SPEC: {"common": [flags...], "runs": {"name": [flags...], ...}}
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from goldtron.arguments import parse_args
from goldtron.parallel.state import ParallelState
from goldtron.training.build import build_trainer


def _observe_buffer(buffer, per_step: dict) -> None:
    """Record the most bytes the buffer held during a step (wraps `keep` on this instance)."""
    inner_keep = buffer.keep

    def keep(x, grad_output):
        inner_keep(x, grad_output)
        per_step["most_kept_bytes"] = max(per_step["most_kept_bytes"], buffer.kept_bytes())

    buffer.keep = keep


def _drain_position(trace) -> dict:
    """Where the drain sat in the step: after the last backward, before the gradient reduction?"""
    spans = trace.spans
    drain = [s for s in spans if s.kind == "wgrad-drain"]
    backward_ends = [s.end for s in spans if s.kind == "backward"]
    reduce_starts = [s.start for s in spans if s.kind == "grad-reduce"]
    return {
        "drain_spans": len(drain),
        "drain_after_last_backward": bool(drain) and drain[0].start >= max(backward_ends, default=0.0),
        "drain_before_grad_reduce": bool(drain) and drain[0].end <= min(reduce_starts, default=float("inf")),
    }


def run_one(name: str, flags: list[str], ps_holder: list, out_dir: Path) -> None:
    args = parse_args(flags, world_size=dist.get_world_size())
    if not ps_holder:
        ps_holder.append(ParallelState.create(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                              torch.device("cpu"), "gloo"))
    ps = ps_holder[0]
    trainer = build_trainer(args, ps, torch.device("cpu"), memory_on_every_rank=True)  # each rank's bytes are checked
    layer = trainer.model.output_layer
    buffer = None if layer is None else layer.deferred
    per_step = {"most_kept_bytes": 0}
    if buffer is not None:
        _observe_buffer(buffer, per_step)

    inner_drain = trainer.schedule.drain_deferred_wgrads

    def drain_and_keep_first_gradient():
        inner_drain()
        if trainer.iteration == 0 and layer is not None:
            torch.save(layer.weight.grad[: layer.weight.real_rows].clone(), out_dir / f"{name}.rank{ps.rank}.grad.pt")

    trainer.schedule.drain_deferred_wgrads = drain_and_keep_first_gradient

    inner_step = trainer.train_step
    history: list[dict] = []  # each step's values; the loop's report adds the memory figures in place

    def step_and_observe() -> dict:
        per_step["most_kept_bytes"] = 0
        values = inner_step()
        values.update(_drain_position(trainer.last_trace))
        values["most_kept_bytes"] = per_step["most_kept_bytes"]
        if buffer is not None:
            values["kept_this_step"] = buffer.deferred_this_step
            values["pending_after_step"] = len(buffer.pending)
            values["drained_gemms_total"] = buffer.drained_gemms
        values["iteration"] = trainer.iteration
        history.append(values)
        return values

    trainer.train_step = step_and_observe
    with trainer.memory:
        trainer.train()
    record = {"rank": ps.rank, "pp_rank": ps.pp_rank, "is_last_stage": ps.is_last_stage,
              "num_micro_batches": args.num_micro_batches, "history": history}
    (out_dir / f"{name}.rank{ps.rank}.json").write_text(json.dumps(record))
    trainer.tb.close()
    del trainer, layer, buffer
    gc.collect()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ps_holder: list = []
    for name, flags in spec["runs"].items():
        run_one(name, spec["common"] + flags, ps_holder, out_dir)
    ps_holder.clear()
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
