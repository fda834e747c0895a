"""torch_dist checkpoints for the training loop: what main.py and the loop call.

    checkpointer = build_checkpointer(args, ps, parts)  # training/checkpointer.py: NullCheckpointer
                                                        # without --save/--load, else a Checkpointer
    checkpointer.load()                   # before training: restore, or say "starting from scratch"
    checkpointer.after_step()             # save every --save-interval iterations
    checkpointer.before_optimizer_step()  # --async-save: wait until the background copy exists
    checkpointer.at_end()                 # final save (as Megatron), then wait for any background write
    checkpointer.close()                  # always: never leave a background write behind

`parts` (CheckpointParts, training/checkpointer.py) are the stateful pieces a checkpoint holds: the model and optimizer
(saved as global tensors, checkpoint/model_state.py), and the progress, LR schedule and RNG
streams (each through its state_dict / load_state_dict). The checkpointer knows nothing else of
the trainer.

The pieces live in goldtron/checkpoint/: model_state (global tensors), rng_state, common_state,
writer (layout and crash safety), validation (what --load finds), background (--async-save).
Errors a person must fix are CheckpointError, raised alike on every rank.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import torch

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from goldtron.checkpoint import rng_state
from goldtron.checkpoint.background import BackgroundWrite
from goldtron.checkpoint.common_state import (
    build_common_state, describe_layout_record, layout_record, restore_schedule, same_layout,
)
from goldtron.checkpoint.errors import CheckpointError, dcp_read_error
from goldtron.checkpoint.global_shard import GlobalShardLoadPlanner
from goldtron.checkpoint.key_check import check_keys, gather_wanted_keys
from goldtron.checkpoint.layout import RELEASE
from goldtron.checkpoint.megatron_format import check_megatron_architecture
from goldtron.checkpoint.megatron_state import to_megatron_values
from goldtron.checkpoint.model_state import (
    OPTIMIZER_PREFIX, has_optimizer_state, is_model_key, load_targets, model_and_optimizer_state,
    parameter_placements,
)
from goldtron.checkpoint.safe_objects import SafeFileSystemReader
from goldtron.checkpoint.validation import FoundCheckpoint, check_architecture, find_checkpoint
from goldtron.checkpoint.writer import prepare_in_progress_dir, write_checkpoint
from goldtron.training.checkpointer import CheckpointParts


class Checkpointer:
    def __init__(self, args, ps, parts: CheckpointParts):
        self.args, self.ps, self.parts = args, ps, parts
        # A group of its own (gloo: DCP's plans travel as CPU objects): a background write's
        # collectives then never interleave with the training loop's on the same group.
        self.group = dist.new_group(backend="gloo")
        self.pending: BackgroundWrite | None = None
        self.snapshot_taken: threading.Event | None = None  # --async-save: set when the copy exists
        self.kept_until_snapshot: dict | None = None  # --async-save: the RNG state the copy is taken from
        self.last_saved_iteration: int | None = None
        self.blocked_seconds = 0.0  # time the loop spent inside save calls (benchmarks read it)

    def _log(self, line: str) -> None:
        # Megatron prints checkpoint messages from rank 0.
        if self.ps.rank == 0:
            print(line, flush=True)

    def _coordinates(self) -> str:
        ps = self.ps
        cp = f", c {ps.cp_rank + 1}/{ps.cp_size}" if ps.cp_size > 1 else ""
        return f"[ t {ps.tp_rank + 1}/{ps.tp_size}, p {ps.pp_rank + 1}/{ps.pp_size}, d {ps.dp_rank + 1}/{ps.dp_size}{cp} ]"

    # ---- save --------------------------------------------------------------------------------
    def after_step(self) -> None:
        a = self.args
        if a.save and a.save_interval and self.parts.progress.iteration % a.save_interval == 0:
            self.save()

    def at_end(self) -> None:
        if self.args.save and self.parts.progress.iteration != self.last_saved_iteration:
            self.save()
        self.wait()

    def save(self) -> None:
        start = time.perf_counter()
        self.wait()  # one write at a time: the next save waits for the previous one
        a, ps, parts, iteration = self.args, self.ps, self.parts, self.parts.progress.iteration
        parts.optimizer.finish_parameter_sync()  # --overlap-param-gather: save whole weights
        with_optimizer = not a.no_save_optim and has_optimizer_state(parts.optimizer)
        placements = parameter_placements(parts.model, ps.tp_rank, ps.tp_size, a.real_vocab_size)
        optimizer = parts.optimizer if with_optimizer else None
        # Small state is taken now, whatever the mode: RNG streams and counters move every step.
        extra = {}
        if not a.no_save_rng:
            extra[rng_state.rng_key(ps)] = parts.rng.state_dict()
        common = build_common_state(parts.progress.state_dict(), parts.lr_schedule.state_dict(), ps, a,
                                    with_optimizer, not a.no_save_rng)
        self._log(f"saving checkpoint at iteration {iteration:7d} to {a.save} in torch_dist format")
        prepare_in_progress_dir(a.save, iteration, self.group)

        def write(state: dict) -> None:
            path = write_checkpoint(state, common, a.save, iteration, self.group)
            self._log(f"  successfully saved checkpoint from iteration {iteration:7d} to {path}")

        if a.async_save:
            # The copy of weights and Adam state is taken in the background too: nothing changes
            # them until the next optimizer step, which waits for it (before_optimizer_step).
            # The RNG tensors captured above are copied there as well, and this thread keeps the
            # originals until the copy exists: they are freed here, in before_optimizer_step (or
            # wait), at the same point on every run. Shared with the write, they were freed on the
            # background thread whenever it finished, and the CPU memory counter saw them go in a
            # different step from one run to the next.
            snapshot_taken = threading.Event()
            handoff = [extra]

            def snapshot_then_write() -> None:
                try:
                    state = model_and_optimizer_state(placements, optimizer, snapshot=True)
                    state.update(copy.deepcopy(handoff.pop()))
                finally:
                    snapshot_taken.set()  # also on failure: the loop must not wait forever
                write(state)

            self.snapshot_taken = snapshot_taken
            self.kept_until_snapshot = extra
            self.pending = BackgroundWrite(snapshot_then_write, f"iteration {iteration}")
        else:
            write(dict(model_and_optimizer_state(placements, optimizer, snapshot=False), **extra))
        self.last_saved_iteration = iteration
        self.blocked_seconds += time.perf_counter() - start

    def before_optimizer_step(self) -> None:
        """--async-save: the background snapshot must be complete before the weights change."""
        if self.snapshot_taken is not None:
            start = time.perf_counter()
            self.snapshot_taken.wait()
            self.snapshot_taken = None
            self.kept_until_snapshot = None
            self.blocked_seconds += time.perf_counter() - start

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.wait()
        self.snapshot_taken = None
        self.kept_until_snapshot = None

    def close(self) -> None:
        """Wait for a background write (a checkpoint must not be cut off by the exit)."""
        self.wait()

    # ---- load --------------------------------------------------------------------------------
    def load(self) -> None:
        a = self.args
        if not a.load:
            return
        found = find_checkpoint(a.load)
        if found is None:
            if a.exit_on_missing_checkpoint:
                raise CheckpointError(f"--load {a.load} has no checkpoint and --exit-on-missing-checkpoint is set; "
                                      "point --load at a checkpoint directory or drop the flag")
            self._log(f"WARNING: no checkpoint found in --load {a.load} (no {os.path.basename(a.load) or a.load}/"
                      "latest_checkpointed_iteration.txt); starting from scratch")
            return
        self._restore(found)

    def _restore(self, found: FoundCheckpoint) -> None:
        a, ps, parts, common = self.args, self.ps, self.parts, found.common
        release = found.iteration == RELEASE
        contents = common["contents"]
        fresh_start = a.finetune or release
        load_optim = not (a.no_load_optim or fresh_start)
        if load_optim and not contents.get("optimizer"):
            raise CheckpointError(f"{found.path} has no optimizer state (saved with --no-save-optim or before the "
                                  "first step); add --no-load-optim or --finetune to load the weights only")
        want_rng = not (a.no_load_rng or fresh_start)
        megatron = found.megatron
        if megatron is not None:
            if load_optim and megatron.optimizer_problem:
                raise CheckpointError(megatron.optimizer_problem)
            want_rng = False
            self._log(f"{found.path} is a Megatron-Core checkpoint: its RNG state (CUDA generator states) is not "
                      "carried over; random streams start from --seed, as Megatron does when the layout changes")
        if want_rng and not contents.get("rng"):
            raise CheckpointError(f"{found.path} has no RNG state (saved with --no-save-rng); "
                                  "add --no-load-rng or --finetune")
        load_rng = want_rng and same_layout(common, ps, a)
        if a.dist_ckpt_strictness != "ignore_all":
            check_architecture(common.get("args"), a, found.path)
            if megatron is not None:
                check_megatron_architecture(megatron, a, found.path)
        self._log(f"loading checkpoint from {a.load} at iteration {found.iteration}")

        placements = parameter_placements(parts.model, ps.tp_rank, ps.tp_size, a.real_vocab_size)
        targets = load_targets(placements, parts.optimizer if load_optim else None)
        steps = {}
        if megatron is not None:
            targets, steps = to_megatron_values(targets, megatron.num_layers, megatron.vocab_rows)
        rng_key = rng_state.rng_key(ps)
        # Only the kinds of state this load asked for can be "unexpected" (Megatron's per-linear
        # _extra_state objects hold nothing goldtron's layers have).
        comparable = {k for k in found.dcp_metadata.state_dict_metadata
                      if (is_model_key(k) or (load_optim and k.startswith(OPTIMIZER_PREFIX))) and "_extra_state" not in k}
        skipped = check_keys(targets, gather_wanted_keys(set(targets), self.group), comparable, found.dcp_metadata,
                             a.dist_ckpt_strictness, found.path, self._log)
        for key in skipped:
            del targets[key]
        if load_rng:
            targets[rng_key] = None  # a pickled value: DCP puts the loaded object here

        try:
            dcp.load(targets, storage_reader=SafeFileSystemReader(found.path),
                     planner=GlobalShardLoadPlanner(found.path), process_group=self.group)
        except (Exception, CheckpointException) as error:  # DCP gathers every rank's failure, raised on all
            raise dcp_read_error(error, found.path) from error

        for step in steps.values():  # Megatron keeps one Adam step for all parameters
            step.fill_(megatron.common_step)
        if load_rng:
            try:
                parts.rng.load_state_dict(targets[rng_key])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
                # Read as plain data, but not the shape goldtron saves: say so, not a TypeError deep down.
                raise CheckpointError(f"{found.path} (item {rng_key}): the RNG state is not what goldtron saves "
                                      f"({type(error).__name__}: {error}); resume with --no-load-rng, or from "
                                      "another checkpoint") from error
        elif want_rng:
            saved = common["layout"]
            self._log(f"RNG state not restored: the checkpoint was saved under "
                      f"{describe_layout_record(saved)} and this run is {describe_layout_record(layout_record(ps, a))}; random streams "
                      "belong to a rank of a layout, so dropout masks after the resume differ from an uninterrupted run")
        if not fresh_start:
            parts.progress.load_state_dict(common)
            if load_optim:  # Megatron restores the schedule with the optimizer
                restore_schedule(common["opt_param_scheduler"], parts.lr_schedule, a, found.common_file)
        if a.load == a.save:
            self.last_saved_iteration = parts.progress.iteration
        self._log(f"  successfully loaded checkpoint from {a.load} at iteration {parts.progress.iteration} "
                  f"(model{', optimizer' if load_optim else ''}{', rng' if load_rng else ''}) {self._coordinates()}")
