"""Runs a step's schedule: the plan of parallel/schedule_plan.py (no pipelining, 1F1B, or
Megatron's interleaved 1F1B with several model chunks per rank), then the drain of the deferred
LM-head weight-gradients.

The schedule owns the step's deferral: `train_step` starts it (nothing carries over), backward
keeps the GEMMs, and they are drained right after the last backward, so the caller's gradient
reduction sees whole gradients. Tensors waiting between plan steps are keyed by
(micro-batch, chunk), so a plan's order is all that differs between the schedules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goldtron.parallel.p2p import PipelineP2P
from goldtron.parallel.schedule_plan import Position, Transfer, Work, eval_plan, train_plan
from goldtron.parallel.trace import StepTrace


@dataclass
class MicroBatch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    # Under context parallelism the tensors are this CP rank's part; this counts the loss tokens
    # of the whole micro-batch (all CP ranks' parts). None: the loss mask is the whole micro-batch.
    whole_loss_tokens: float | None = None


@dataclass
class StepLoss:
    """Sum of masked per-token losses and number of loss tokens (last stage; zeros elsewhere)."""

    loss_sum: float = 0.0
    num_tokens: float = 0.0


class _Tensors:
    """What waits between the steps of one plan, keyed by (micro-batch, chunk)."""

    def __init__(self):
        self.inputs: dict = {}        # received activations, the inputs of a forward
        self.to_send: dict = {}       # forward outputs waiting for send_next
        self.in_flight: dict = {}     # (input, output) kept for the backward
        self.output_grads: dict = {}  # received gradients of a forward's output
        self.input_grads: dict = {}   # gradients of a forward's input waiting for send_prev


class Schedule:
    def __init__(self, model, ps, p2p: PipelineP2P, trace: StepTrace | None = None,
                 microbatch_group_size: int | None = None, per_token_loss: bool = False):
        """Gradients are averaged over the data x context-parallel group (`ps.dp_cp_size` ranks)."""
        self.model = model
        self.ps = ps
        self.p2p = p2p
        self.trace = trace or StepTrace()
        self.position = Position(ps.pp_size, ps.pp_rank, model.num_chunks)
        self.microbatch_group_size = microbatch_group_size  # interleaved only; None: PP
        self.per_token_loss = per_token_loss  # --calculate-per-token-loss

    # ---- one micro-batch through one chunk -------------------------------------------------
    def _forward(self, work: Work, mb: MicroBatch, stage_input, num_micro_batches: int, loss: StepLoss):
        chunk = work.chunk
        with self.trace.span("forward", work.micro_batch, chunk):
            if self.model.takes_tokens(chunk):
                out = self.model(mb.tokens, mb.position_ids, chunk=chunk)
            else:
                out = self.model(stage_input, chunk=chunk)
            if not self.model.computes_loss(chunk):
                return out
            per_token = self.model.loss(out, mb.labels)
            loss_sum = (per_token * mb.loss_mask).sum()
            num_tokens = mb.loss_mask.sum()
            loss.loss_sum += float(loss_sum.detach())
            loss.num_tokens += float(num_tokens)
            if self.per_token_loss:
                # Megatron's --calculate-per-token-loss: the sum; the gradients are divided by the
                # step's token count (all micro-batches, all DP ranks) after the DP reduction.
                return loss_sum
            # Megatron: each micro-batch's mean loss, scaled by 1/M so the step's gradient is the mean.
            if mb.whole_loss_tokens is None:
                return loss_sum / num_tokens / num_micro_batches
            # Context parallelism: this rank's part of the micro-batch's mean, times CP because the
            # gradient reduction averages over the CP ranks too (their parts add up to the mean).
            return loss_sum / mb.whole_loss_tokens * self.ps.cp_size / num_micro_batches

    def _backward(self, work: Work, stage_input, output, output_grad):
        with self.trace.span("backward", work.micro_batch, work.chunk):
            if output_grad is None:
                output.backward()
            else:
                output.backward(output_grad)
            return None if stage_input is None else stage_input.grad

    def _transfer(self, step: Transfer, held: _Tensors, training: bool) -> None:
        with self.trace.span("p2p-wait"):
            activation, gradient = self.p2p.exchange(
                send_next=None if step.send_next is None else held.to_send.pop(step.send_next),
                send_prev=None if step.send_prev is None else held.input_grads.pop(step.send_prev),
                recv_prev=step.recv_prev is not None, recv_next=step.recv_next is not None)
        if activation is not None:
            held.inputs[step.recv_prev] = activation.requires_grad_(True) if training else activation
        if gradient is not None:
            held.output_grads[step.recv_next] = gradient

    def _run(self, plan: list, micro_batches: list[MicroBatch], training: bool) -> StepLoss:
        loss, m, held = StepLoss(), len(micro_batches), _Tensors()
        for step in plan:
            if isinstance(step, Transfer):
                self._transfer(step, held, training)
            elif step.kind == "forward":
                x = held.inputs.pop(step.slot, None)
                out = self._forward(step, micro_batches[step.micro_batch], x, m, loss)
                if not self.model.computes_loss(step.chunk):
                    held.to_send[step.slot] = out.detach()
                if training:
                    held.in_flight[step.slot] = (x, out)
            else:
                x, out = held.in_flight.pop(step.slot)
                dx = self._backward(step, x, out, held.output_grads.pop(step.slot, None))
                if dx is not None:
                    held.input_grads[step.slot] = dx
        return loss

    # ---- whole step ----------------------------------------------------------------------
    def train_step(self, micro_batches: list[MicroBatch]) -> StepLoss:
        """Forward and backward of every micro-batch, then the drain of the deferred wgrads."""
        self.model.start_deferred_wgrads()
        plan = train_plan(self.position, len(micro_batches), self.microbatch_group_size)
        loss = self._run(plan, micro_batches, training=True)
        self.drain_deferred_wgrads()
        return loss

    def drain_deferred_wgrads(self) -> None:
        with self.trace.span("wgrad-drain"):
            self.model.drain_deferred_wgrads()

    @torch.no_grad()
    def forward_only(self, micro_batches: list[MicroBatch]) -> StepLoss:
        plan = eval_plan(self.position, len(micro_batches), self.microbatch_group_size)
        return self._run(plan, micro_batches, training=False)
