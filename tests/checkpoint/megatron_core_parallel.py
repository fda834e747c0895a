"""Megatron-Core's own training and save under TP x PP on gloo ranks (CPU), run by torchrun:

    torchrun --nproc-per-node N megatron_core_parallel.py JOBS.json
        JOBS: [{"dir": DIR, "out": JSON_OUT, "flags": GOLDTRON_FLAGS, "tp": T, "pp": P,
                "distributed_optimizer": bool, "sharding": "dp_reshardable" | "fully_reshardable" | null}, ...]
        (one T x P for all jobs of a launch: Megatron's process groups are made once)

Each job is Megatron-LM's training step built from Megatron-Core's own parts: GPTModel (local
spec) on this rank's stage, its DistributedDataParallel, get_megatron_optimizer (Adam, clipping;
with the distributed optimizer when asked), the 1F1B pipeline schedule
(get_forward_backward_func) with finalize_model_grads (the tied embedding's gradient all-reduce
between the first and last stage) and pretrain_gpt's loss function (sum and token count per
micro-batch). It takes one step on the run's first global batch (goldtron's data pipeline gives
the tokens), saves iteration 1 by dist_checkpointing.save with the model's and the optimizer's
sharded_state_dict (the distributed optimizer in the `sharding` form Megatron-LM picks:
dp_reshardable by default, fully_reshardable with --dist-ckpt-optim-fully-reshardable), and the
last stage writes to JSON_OUT the forward loss on the second global batch and, after one more
step, on the third (what goldtron's first and second steps after loading must log).

What Megatron-Core needs on a CPU besides megatron_core_side.cpu_workarounds, each named:
- CudaOnCpu below. Megatron-Core 0.16.1 makes tensors with device="cuda" written out
  (pipeline_parallel/schedules.py: `total_num_tokens = torch.zeros([], ..., device="cuda")` in
  every schedule; optimizer/optimizer.py MixedPrecisionOptimizer/FP32Optimizer `found_inf`,
  `_dummy_overflow_buf`, `_scale_one`, `_scale`; optimizer/clip_grads.py `total_norm_cuda`,
  `dummy_overflow_buf`), calls `.cuda()` (models/common/language_module/language_module.py,
  the tied embedding's first-stage/last-stage sync) and asserts CUDA tensor types
  (clip_grads.py `param.grad.type() == 'torch.cuda.FloatTensor'`,
  distrib_optimizer.py `model_param.type() == 'torch.cuda.FloatTensor'`). None of these
  compute anything a CPU cannot: the mode makes device="cuda" the CPU, `.cuda()` the tensor
  itself, and a CPU tensor's `.type()` its CUDA name.
- The functions run under `if __name__ == "__main__"`: torch_dist's save starts a
  multiprocessing Manager with the "spawn" start method (dist_checkpointing/strategies/
  filesystem_async.py, _get_write_results_queue), whose child re-imports this file.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from megatron_core_side import cpu_workarounds, causal_mask, global_batch, goldtron_args, megatron_args, \
    megatron_model, megatron_schedule, positions_of, save_as_megatron_lm


class CudaOnCpu(TorchFunctionMode):
    """device="cuda" -> the CPU, .cuda() -> the tensor, .type() -> the CUDA type name (module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.", "torch.cuda.", 1)
        return func(*args, **kwargs)


def micro_batches(args, first_sample: int) -> list[tuple[torch.Tensor, ...]]:
    tokens, labels, loss_mask = global_batch(args, first_sample)
    mb = args.micro_batch_size
    return [(tokens[i:i + mb], labels[i:i + mb], loss_mask[i:i + mb]) for i in range(0, len(tokens), mb)]


def forward_step(data_iterator, model):
    """pretrain_gpt's forward step: the model's per-token loss, and its loss function (sum, tokens, report)."""
    tokens, labels, loss_mask = next(data_iterator)
    output = model(tokens, positions_of(tokens), causal_mask(tokens), labels=labels)

    def loss_func(per_token):
        total = (per_token.float().view(-1) * loss_mask.view(-1).float()).sum()
        count = loss_mask.sum().to(torch.int)
        return total, count, {"lm loss": torch.stack([total.detach(), count.float()])}

    return output, loss_func


def run_schedule(ddp, args, first_sample: int, forward_only: bool) -> float | None:
    """The 1F1B schedule over the global batch from `first_sample`: its token-mean loss on the last stage."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batches = micro_batches(args, first_sample)
    reports = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=[ddp], num_microbatches=len(batches),
        seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, forward_only=forward_only)
    if not reports:  # not the last stage
        return None
    summed = torch.stack([r["lm loss"] for r in reports]).sum(0)
    return (summed[0] / summed[1]).item()


def train_step(ddp, optimizer, schedule, args, first_sample: int) -> None:
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    run_schedule(ddp, args, first_sample, forward_only=False)
    update_successful, _, _ = optimizer.step()
    assert update_successful
    schedule.step(args.global_batch_size)


def save(job: dict) -> None:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    args = goldtron_args(job["flags"])
    tp, pp, distributed = job["tp"], job["pp"], job["distributed_optimizer"]
    model = megatron_model(args, tp, pp)
    model.config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(use_distributed_optimizer=distributed),
                                  model)
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, clip_grad=args.clip_grad,
        use_distributed_optimizer=distributed, params_dtype=torch.float32), [ddp])
    schedule = megatron_schedule(optimizer, args)
    gb = args.global_batch_size
    train_step(ddp, optimizer, schedule, args, 0)
    loss = run_schedule(ddp, args, gb, forward_only=True)  # what goldtron's first step after loading computes
    model_state = model.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": job["sharding"]} if distributed else None
    world = dist.get_world_size()
    state = {"model": model_state, "optimizer": optimizer.sharded_state_dict(model_state, metadata=metadata),
             "args": megatron_args(args, 1, gb, tp, pp, world, distributed, job["sharding"] != "dp_reshardable"),
             "checkpoint_version": 3.0, "iteration": 1, "opt_param_scheduler": schedule.state_dict(),
             "num_floating_point_operations_so_far": 0}
    save_as_megatron_lm(state, job["dir"], 1)
    train_step(ddp, optimizer, schedule, args, gb)  # Megatron goes on from the checkpoint
    after = run_schedule(ddp, args, 2 * gb, forward_only=True)
    if dist.get_rank() == world - 1:  # the last stage's (TP ranks agree)
        json.dump({"loss": loss, "after_next_step": {"loss": after}}, open(job["out"], "w"))


def main(argv: list[str]) -> None:
    jobs = json.load(open(argv[0]))
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(jobs[0]["tp"], jobs[0]["pp"])
    with CudaOnCpu():
        for job in jobs:
            cpu_workarounds()  # also resets the RNG tracker: each job starts as a fresh run
            save(job)
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
