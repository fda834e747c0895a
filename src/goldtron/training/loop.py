"""The training loop: one step = schedule (forward/backward over micro-batches, then the drain of
deferred weight-gradients), reduce gradients, norms and clipping, optimizer, LR schedule, report."""

from __future__ import annotations

import math
import time
from argparse import Namespace

import torch

from goldtron import trainer_contract as tags
from goldtron.data.sampler import collate, micro_batch_sample_indices
from goldtron.parallel.collectives import all_gather_, all_reduce_
from goldtron.parallel.context_parallel import micro_batch_part
from goldtron.parallel.schedule import MicroBatch, Schedule, StepLoss
from goldtron.parallel.state import ParallelState
from goldtron.parallel.trace import KINDS, StepTrace, append_step
from goldtron.training import grads
from goldtron.training.logging import TensorBoardLog, as_float32, megatron_log_line, print_rank
from goldtron.training.lr_schedule import LRSchedule
from goldtron.training.memory import MemoryStats
from goldtron.training.metrics_file import MetricsFile
from goldtron.training.optimizer import Optimizer, set_learning_rate
from goldtron.training.progress import TrainingProgress
from goldtron.training.qk_norm_check import check_qk_norms_agree
from goldtron.training.replica_check import check_weight_hashes_across_dp_replicas
from goldtron.training.rerun import ResultValidator


class Trainer:
    def __init__(self, args: Namespace, ps: ParallelState, model, optimizer: Optimizer, lr_schedule: LRSchedule,
                 schedule: Schedule, train_ds, valid_ds, memory: MemoryStats, progress: TrainingProgress,
                 checkpointer, metrics_file: MetricsFile, result_validator: ResultValidator | None = None,
                 random_state=None):
        self.args = args
        self.ps = ps
        self.model = model
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.schedule = schedule
        self.train_ds = train_ds
        self.valid_ds = valid_ds
        self.memory = memory
        self.checkpointer = checkpointer  # a NullCheckpointer without --save/--load
        self.progress = progress
        self.metrics_file = metrics_file
        self.tb = TensorBoardLog(args.tensorboard_dir, ps.is_logging_rank)
        self.last_trace: StepTrace | None = None  # the latest step's schedule spans
        # --rerun-mode (training/rerun.py) and the random streams a re-run restores (RankRandomState)
        self.result_validator = result_validator or ResultValidator("disabled", ps)
        self.random_state = random_state

    @property
    def iteration(self) -> int:
        return self.progress.iteration

    @property
    def consumed_samples(self) -> int:
        return self.progress.consumed_samples

    def close(self) -> None:
        """Close what the trainer opened: the TensorBoard writer, the checkpointer (a background write)."""
        self.tb.close()
        self.checkpointer.close()

    # ---- data ------------------------------------------------------------------------------
    def _micro_batches(self, dataset, first_sample: int) -> list[MicroBatch]:
        a = self.args
        batches = []
        for indices in micro_batch_sample_indices(first_sample, a.micro_batch_size, self.ps.dp_size, self.ps.dp_rank,
                                                  a.num_micro_batches):
            tokens, labels, loss_mask, position_ids = collate([dataset[i] for i in indices])
            dev = self.ps.device
            whole = MicroBatch(tokens.to(dev), labels.to(dev), loss_mask.to(dev), position_ids.to(dev))
            batches.append(micro_batch_part(whole, self.ps.cp_size, self.ps.cp_rank))
        return batches

    # ---- one step --------------------------------------------------------------------------
    def train_step(self) -> dict:
        a = self.args
        trace = StepTrace(start=time.perf_counter())
        self.schedule.trace = trace
        self.model.train()
        micro_batches = self._micro_batches(self.train_ds, self.consumed_samples)
        lr = self.lr_schedule.lr()
        set_learning_rate(self.optimizer, lr)
        step_loss = StepLoss()

        def forward_backward() -> float:
            nonlocal step_loss
            self.optimizer.zero_grad()
            step_loss = self.schedule.train_step(micro_batches)  # deferred wgrads drained inside
            return step_loss.loss_sum / step_loss.num_tokens if step_loss.num_tokens else float("nan")

        self.result_validator.run_step(forward_backward, self._save_random_state, self._restore_random_state,
                                       self.iteration + 1)
        if a.test_mode:  # Megatron's real-time test: the weights these forwards used agree across DP and TP
            check_qk_norms_agree(self.model.named_parameters(), self.ps, self.iteration + 1)
        with trace.span("grad-reduce"):
            grad_norm, num_zeros = self._reduce_measure_and_clip_gradients(micro_batches)
        with trace.span("optimizer"):
            self.checkpointer.before_optimizer_step()  # an async save's copy must be complete
            self.optimizer.step()
        self.lr_schedule.step(a.global_batch_size)
        self.progress.advance(a.global_batch_size)

        params_norm = self._norm(self.optimizer.counted_views(use_grad=False)) if a.log_params_norm else None
        lm_loss = self._reduce_loss(step_loss)
        trace.end = time.perf_counter()
        self.last_trace = trace
        return {
            "lm_loss": lm_loss, "grad_norm": grad_norm, "num_zeros": num_zeros, "params_norm": params_norm,
            # Megatron logs the learning rate after the scheduler's increment.
            "learning_rate": self.lr_schedule.lr(), "lr_used": lr,
            "iteration_time": trace.end - trace.start, "batch_size": a.global_batch_size,
            "consumed_samples": self.consumed_samples,
        }

    def _save_random_state(self):
        return self.random_state.state_dict() if self.random_state is not None else None

    def _restore_random_state(self, state) -> None:
        if self.random_state is not None:
            self.random_state.load_state_dict(state)

    def _reduce_measure_and_clip_gradients(self, micro_batches: list[MicroBatch]) -> tuple[float, int | None]:
        """Make the gradients final (the optimizer's reduction; with --calculate-per-token-loss then the
        division by the step's tokens, as Megatron's finalize_model_grads), then grad-norm, num-zeros, clipping."""
        self.optimizer.reduce_gradients()
        if self.args.calculate_per_token_loss:
            tokens = grads.step_token_count(micro_batches, self.ps)
            if tokens > 0:
                grads.scale_gradients_(self.optimizer.gradients(), 1.0 / tokens)
        views = self.optimizer.counted_views(use_grad=True)
        grad_norm = self._norm(views)
        num_zeros = grads.count_zeros(views, self.ps, self.optimizer.norm_group) if self.args.log_num_zeros_in_grad \
            else None
        grads.clip_gradients_(self.optimizer.gradients(), grad_norm, self.args.clip_grad)
        return grad_norm, num_zeros

    def _norm(self, views: list[torch.Tensor]) -> float:
        return grads.global_norm(views, self.ps, self.optimizer.norm_group)

    def _reduce_loss(self, step_loss: StepLoss) -> float:
        """Token-weighted mean over the step's micro-batches and DP x CP ranks (last stage has it)."""
        pair = torch.tensor([step_loss.loss_sum, step_loss.num_tokens], dtype=torch.float64, device=self.ps.device)
        if self.ps.is_last_stage:
            all_reduce_(pair, self.ps.dp_cp_group, self.ps.backend_release)
        return float(pair[0] / pair[1]) if pair[1] > 0 else float("nan")

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> float | None:
        a = self.args
        if self.valid_ds is None or a.eval_iters <= 0:
            return None
        self.optimizer.finish_parameter_sync()  # --overlap-param-gather: whole weights for the forward-only pass
        self.model.eval()
        self.schedule.trace = StepTrace()  # evaluation spans stay out of the last training step's trace
        total = StepLoss()
        eval_round = max(0, self.iteration // a.eval_interval - 1) if a.eval_interval else 0
        first = eval_round * a.eval_iters * a.global_batch_size
        for k in range(a.eval_iters):
            loss = self.schedule.forward_only(self._micro_batches(self.valid_ds, first + k * a.global_batch_size))
            total.loss_sum += loss.loss_sum
            total.num_tokens += loss.num_tokens
        self.model.train()
        return self._reduce_loss(total)

    def _report_eval(self, where: str) -> None:
        loss = self.evaluate()
        if loss is None or not self.ps.is_logging_rank:
            return
        ppl = math.exp(min(20.0, loss))
        self.tb.scalar(tags.LM_LOSS_VALIDATION, loss, self.iteration)
        if self.args.log_validation_ppl_to_tensorboard:
            self.tb.scalar(tags.LM_LOSS_VALIDATION_PPL, ppl, self.iteration)
        line = f" validation loss at {where} | lm loss value: {as_float32(loss):.6E} | lm loss PPL: {as_float32(ppl):.6E} |"
        bar = "-" * (len(line) + 1)
        print_rank(f"{bar}\n{line}\n{bar}", True)

    # ---- reporting -------------------------------------------------------------------------
    def _timer_totals_all_ranks(self, trace: StepTrace) -> torch.Tensor:
        """[world, kinds+1] seconds per rank and kind, gathered to every rank (one collective)."""
        totals = trace.totals()
        local = torch.tensor([totals[k] for k in (*KINDS, "idle")], dtype=torch.float64, device=self.ps.device)
        if self.ps.world_size == 1:
            return local.unsqueeze(0)
        gathered = all_gather_([torch.empty_like(local) for _ in range(self.ps.world_size)], local, None,
                               self.ps.backend_release)
        return torch.stack(gathered)

    def _report(self, values: dict, first_of_run: bool) -> None:
        a, it = self.args, self.iteration
        timers = None
        if a.log_timers_to_tensorboard:
            timers = self._timer_totals_all_ranks(self.last_trace)
            if a.tensorboard_dir:  # for `goldtron timeline`
                append_step(a.tensorboard_dir, self.last_trace, it, self.ps)
        values["mem_allocated"] = self.memory.allocated()
        values["mem_max_allocated"] = self.memory.max_allocated()
        logged_line = it % a.log_interval == 0 or it == a.train_iters
        stats = self.result_validator.report() if logged_line else None  # every rank empties its record
        if not self.ps.is_logging_rank:
            return
        self.metrics_file.write(self.iteration, values)
        tb = self.tb
        tb.scalar(tags.LM_LOSS, values["lm_loss"], it)
        tb.scalar(tags.LEARNING_RATE, values["learning_rate"], it)
        tb.scalar(tags.BATCH_SIZE, values["batch_size"], it)
        tb.scalar(tags.GRAD_NORM, values["grad_norm"], it)
        if values["num_zeros"] is not None:
            tb.scalar(tags.NUM_ZEROS, values["num_zeros"], it)
        if values["params_norm"] is not None:
            tb.scalar(tags.PARAMS_NORM, values["params_norm"], it)
        if a.log_memory_to_tensorboard:
            tb.scalar(tags.MEM_ALLOCATED, values["mem_allocated"], it)
            tb.scalar(tags.MEM_MAX_ALLOCATED, values["mem_max_allocated"], it)
        if timers is not None:
            if not first_of_run:  # Megatron: no iteration-time for a run's first iteration
                tb.scalar(tags.ITERATION_TIME, values["iteration_time"], it)
            for r in range(timers.shape[0]):
                for k, kind in enumerate((*KINDS, "idle")):
                    tb.scalar(tags.pipeline_timer_tag(r, kind), float(timers[r, k]), it)
        if logged_line:
            print_rank(megatron_log_line(it, a.train_iters, values), True)
            if stats:
                print_rank(f" {stats}", True)

    def _check_replicas(self) -> None:
        interval = self.args.check_weight_hash_across_dp_replicas_interval
        if interval and self.iteration % interval == 0:
            check_weight_hashes_across_dp_replicas(self.model.named_parameters(), self.ps, self.iteration)
            print_rank(f" >>> Weight hashes match after {self.iteration} iterations...", self.ps.rank == 0)

    # ---- the run ---------------------------------------------------------------------------
    def train(self) -> None:
        a = self.args
        first = True
        end = a.train_iters if a.exit_interval is None else min(a.train_iters, a.exit_interval)
        while self.iteration < end:
            values = self.train_step()
            self._report(values, first)
            first = False
            self._check_replicas()
            if a.eval_interval and self.iteration % a.eval_interval == 0 and self.iteration < a.train_iters:
                self._report_eval(f"iteration {self.iteration}")
            self.checkpointer.after_step()
        if a.eval_iters > 0 and self.iteration >= a.train_iters:
            self._report_eval("the end of training for val data")
        self.optimizer.finish_parameter_sync()  # the run ends with whole weights
        self.checkpointer.at_end()
        self.tb.flush()
