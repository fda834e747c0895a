"""One rank's run once its flags are valid: process groups, the trainer's parts, training, teardown.

Kept apart from `main.py` so that flag validation runs before torch is imported: a bad flag
makes every rank exit in a fraction of a second, before any rank could wait on another.
"""

from __future__ import annotations

import gc
import os
import random
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def _init_distributed(args) -> torch.device:
    if args.distributed_backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    timeout = timedelta(minutes=args.distributed_timeout_minutes)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(args.distributed_backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    else:
        # Started alone: a one-rank group in memory (no port to pick, nothing to clash).
        dist.init_process_group(args.distributed_backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return device


def _seed_everything(args, pp_rank: int) -> None:
    # Megatron: seed + 100 * pp_rank for the default generators.
    seed = args.seed + 100 * pp_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(args, ps, device: torch.device, metrics_file=None, memory_on_every_rank: bool = False):
    """Model, optimizer, data and schedule for `args` on existing process groups (tests build several
    trainers in one torchrun launch, so this is separate from group set-up and tear-down).
    `metrics_file`: a MetricsFile for full-precision values (default: none written).
    `memory_on_every_rank`: run the CPU memory counter of `--log-memory-to-tensorboard` on every
    rank, not only on the logging rank, the one rank whose figures are written (for tests that read
    each rank's)."""
    # Imported here so `goldtron train --help`-style failures stay cheap.
    from goldtron.data.errors import DataError
    from goldtron.data.provider import build_datasets, build_tokenizer
    from goldtron.model.gpt import GPTStage
    from goldtron.parallel.p2p import PipelineP2P
    from goldtron.parallel.random import DropoutRNG
    from goldtron.parallel.schedule import Schedule
    from goldtron.checkpoint.rng_state import RankRandomState
    from goldtron.training.checkpointer import CheckpointParts, build_checkpointer
    from goldtron.training.loop import Trainer
    from goldtron.training.lr_schedule import LRSchedule
    from goldtron.training.memory import MemoryStats
    from goldtron.training.metrics_file import MetricsFile
    from goldtron.training.optimizer import build_optimizer
    from goldtron.training.progress import TrainingProgress
    from goldtron.training.rerun import ResultValidator

    _seed_everything(args, ps.pp_rank)

    tokenizer = build_tokenizer(args)
    if tokenizer.vocab_size != args.real_vocab_size:  # validation sized the model from the vocab file
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} ids but its vocabulary file lists "
                        f"{args.real_vocab_size}; give a --vocab-file whose entries are the tokenizer's ids")
    gb = args.global_batch_size
    eval_rounds = (args.train_iters // args.eval_interval + 1) if args.eval_interval else 1
    train_ds, valid_ds, _ = build_datasets(
        args, tokenizer, args.train_iters * gb, eval_rounds * args.eval_iters * gb, args.eval_iters * gb,
        is_builder_rank=ps.rank == 0, barrier=dist.barrier,
    )

    # The CPU counter costs a Python call per op (training/memory.py), and only the logging rank's
    # figures are written (as Megatron writes the last rank's): the other ranks need not pay it.
    count_memory = args.log_memory_to_tensorboard and (ps.is_logging_rank or memory_on_every_rank)
    memory = MemoryStats(device, enabled=count_memory, release=ps.backend_release)
    rng = DropoutRNG(args.seed, ps.pp_rank, ps.tp_rank, device)
    model = GPTStage(args, ps, rng)
    optimizer = build_optimizer(model, args, ps)
    lr_schedule = LRSchedule.from_args(args)
    progress = TrainingProgress()
    random_state = RankRandomState(rng)
    checkpointer = build_checkpointer(args, ps, CheckpointParts(model, optimizer, lr_schedule, progress,
                                                                random_state))
    # Between stages travels this rank's sequence part: its CP part, and of that its TP part under
    # --sequence-parallel (as in Megatron).
    stage_seq = args.seq_length // ps.cp_size
    if args.sequence_parallel:
        stage_seq //= ps.tp_size
    p2p = PipelineP2P(ps, (args.micro_batch_size, stage_seq, args.hidden_size), args.params_dtype)
    schedule = Schedule(model, ps, p2p, microbatch_group_size=args.microbatch_group_size_per_vp_stage,
                        per_token_loss=args.calculate_per_token_loss)
    trainer = Trainer(args, ps, model, optimizer, lr_schedule, schedule, train_ds, valid_ds, memory,
                      progress, checkpointer, metrics_file or MetricsFile(None), ResultValidator.from_args(args, ps),
                      random_state)
    if memory.cpu_counter is not None:
        memory.cpu_counter.track_existing(model.parameters())
    return trainer


def build_and_train(args) -> None:
    from goldtron.parallel.state import ParallelState
    from goldtron.training.metrics_file import METRICS_FILE_ENV, MetricsFile

    configure_torch(args)
    device = _init_distributed(args)
    ps = ParallelState.create(args.tensor_model_parallel_size, args.pipeline_model_parallel_size, device,
                              args.distributed_backend, args.use_tp_pp_dp_mapping, args.context_parallel_size,
                              args.hierarchical_context_parallel_sizes)
    try:
        train_on(args, ps, device, MetricsFile(os.environ.get(METRICS_FILE_ENV)))
    finally:
        dist.destroy_process_group()


def configure_torch(args) -> None:
    """This process's thread count and deterministic kernels, from the run's flags (fixed thread
    count = fixed bits); on CPUs, freed tensor memory kept for reuse (training/cpu_malloc.py)."""
    from goldtron.training.cpu_malloc import keep_freed_cpu_memory_for_reuse
    from goldtron.training.eager_torch import use_deterministic_algorithms

    if args.distributed_backend != "nccl":
        keep_freed_cpu_memory_for_reuse()
    torch.set_num_threads(args.torch_threads)
    if args.deterministic_mode:
        use_deterministic_algorithms(True)


def train_on(args, ps, device: torch.device, metrics_file) -> None:
    """One run on existing process groups: build, load (when --load), train, close, free."""
    trainer = build_trainer(args, ps, device, metrics_file)
    try:
        with trainer.memory:
            trainer.checkpointer.load()
            # What is alive now (torch's and goldtron's modules, model, optimizer: ~170k objects)
            # lives as long as the run; frozen, the collector's passes during training skip it
            # (a full pass took 80 ms of a last-stage rank's step, on the pipeline's critical path).
            gc.freeze()
            trainer.train()
    finally:
        gc.unfreeze()  # collectable again: a process may train more than one run (tests do)
        trainer.close()
        # torch can abort at exit if process-group-bound objects outlive the group: free first.
        del trainer
        gc.collect()
