"""The step schedules: no pipelining (one stage), 1F1B (non-interleaved), and forward-only (eval).

1F1B on stage s of P with M micro-batches (Megatron's counts): warmup = min(P - s - 1, M)
forwards, then M - warmup steady (one forward, one backward) slots, then warmup cooldown
backwards. The schedule owns the step's deferral of the LM-head weight-gradients: `train_step`
starts it (nothing carries over), backward keeps the GEMMs, and they are drained right after the
cooldown, so the caller's gradient reduction sees whole gradients.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from goldtron.parallel.p2p import PipelineP2P
from goldtron.parallel.trace import StepTrace


@dataclass
class MicroBatch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor


@dataclass
class StepLoss:
    """Sum of masked per-token losses and number of loss tokens (last stage; zeros elsewhere)."""

    loss_sum: float = 0.0
    num_tokens: float = 0.0


def warmup_count(pp_size: int, pp_rank: int, num_micro_batches: int) -> int:
    return min(pp_size - pp_rank - 1, num_micro_batches)


class Schedule:
    def __init__(self, model, ps, p2p: PipelineP2P, trace: StepTrace | None = None, per_token_loss: bool = False):
        self.model = model
        self.ps = ps
        self.p2p = p2p
        self.trace = trace or StepTrace()
        self.per_token_loss = per_token_loss  # --calculate-per-token-loss

    # ---- one micro-batch -------------------------------------------------------------------
    def _forward(self, index: int, mb: MicroBatch, stage_input, num_micro_batches: int, loss: StepLoss):
        with self.trace.span("forward", index):
            if self.ps.is_first_stage:
                out = self.model(mb.tokens, mb.position_ids)
            else:
                out = self.model(stage_input)
            if not self.ps.is_last_stage:
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
            return loss_sum / num_tokens / num_micro_batches

    def _backward(self, index: int, stage_input, output, output_grad):
        with self.trace.span("backward", index):
            if output_grad is None:
                output.backward()
            else:
                output.backward(output_grad)
            return None if stage_input is None else stage_input.grad

    def _exchange(self, **kwargs):
        with self.trace.span("p2p-wait"):
            return self.p2p.exchange(**kwargs)

    def _recv_input(self):
        x, _ = self._exchange(recv_prev=True)
        if x is not None:
            x.requires_grad_(True)
        return x

    # ---- whole step ----------------------------------------------------------------------
    def train_step(self, micro_batches: list[MicroBatch]) -> StepLoss:
        """Forward and backward of every micro-batch, then the drain of the deferred wgrads."""
        self.model.start_deferred_wgrads()
        if self.ps.pp_size == 1:
            loss = self._no_pipelining(micro_batches)
        else:
            loss = self._one_f_one_b(micro_batches)
        self.drain_deferred_wgrads()
        return loss

    def _no_pipelining(self, micro_batches: list[MicroBatch]) -> StepLoss:
        loss, m = StepLoss(), len(micro_batches)
        for i, mb in enumerate(micro_batches):
            out = self._forward(i, mb, None, m, loss)
            self._backward(i, None, out, None)
        return loss

    def _one_f_one_b(self, micro_batches: list[MicroBatch]) -> StepLoss:
        ps, loss, m = self.ps, StepLoss(), len(micro_batches)
        warmup = warmup_count(ps.pp_size, ps.pp_rank, m)
        steady = m - warmup
        in_flight: deque = deque()  # (index, stage input, output) awaiting backward
        next_forward = 0
        next_backward = 0

        for _ in range(warmup):
            x = self._recv_input()
            out = self._forward(next_forward, micro_batches[next_forward], x, m, loss)
            self._exchange(send_next=None if ps.is_last_stage else out.detach())
            in_flight.append((next_forward, x, out))
            next_forward += 1

        x = self._recv_input() if steady > 0 else None
        for i in range(steady):
            out = self._forward(next_forward, micro_batches[next_forward], x, m, loss)
            in_flight.append((next_forward, x, out))
            next_forward += 1
            _, grad = self._exchange(send_next=None if ps.is_last_stage else out.detach(), recv_next=True)
            index, x_b, out_b = in_flight.popleft()
            dx = self._backward(index, x_b, out_b, grad)
            next_backward += 1
            last = i == steady - 1
            x, _ = self._exchange(send_prev=dx, recv_prev=not last)
            if x is not None:
                x.requires_grad_(True)

        for _ in range(warmup):
            _, grad = self._exchange(recv_next=True)
            index, x_b, out_b = in_flight.popleft()
            dx = self._backward(index, x_b, out_b, grad)
            self._exchange(send_prev=dx)
        return loss

    def drain_deferred_wgrads(self) -> None:
        with self.trace.span("wgrad-drain"):
            self.model.drain_deferred_wgrads()

    @torch.no_grad()
    def forward_only(self, micro_batches: list[MicroBatch]) -> StepLoss:
        loss, m = StepLoss(), len(micro_batches)
        for i, mb in enumerate(micro_batches):
            x, _ = self._exchange(recv_prev=True)
            out = self._forward(i, mb, x, m, loss)
            if not self.ps.is_last_stage:
                self._exchange(send_next=out)
        return loss
