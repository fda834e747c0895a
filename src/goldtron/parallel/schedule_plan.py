"""What one pipeline rank does in one step, in order: the plans of Megatron's schedules.

A plan is a list of steps, each either `Work` (the forward or backward of one micro-batch through
one model chunk) or `Transfer` (one batch of p2p sends and receives with the neighbouring ranks,
posted together and waited for together). schedule.py runs a plan; tests/unit check plans on
their own: every send meets its receive, in order, and no rank waits forever.

Ranks form a ring for the transfers: the next rank of rank PP-1 is rank 0, since with V model
chunks per rank the activations of chunk c on the last rank go on to chunk c+1 on the first. A
tensor is named by the (micro-batch, chunk) it belongs to on the rank that holds it:
- `send_next` (mb, c): the output of chunk c, input of the next virtual stage;
- `recv_prev` (mb, c): received from the previous rank, the input of chunk c here;
- `send_prev` (mb, c): the gradient of chunk c's input, for the previous virtual stage;
- `recv_next` (mb, c): received from the next rank, the gradient of chunk c's output here.

The schedules (megatron/core/pipeline_parallel/schedules.py):
- no pipelining (PP 1): forward and backward of each micro-batch in turn;
- 1F1B (one chunk): rank r runs min(PP - r - 1, M) warmup forwards, then one forward and one
  backward per slot, then the cooldown backwards;
- interleaved 1F1B (V chunks): M x V virtual micro-batches in the order of Megatron's schedule
  table (groups of G micro-batches, each run through chunk 0, then chunk 1, ...; backwards go
  through the chunks in reverse), warmup (PP - r - 1) x 2 + (V - 1) x G, capped at M x V (then
  every forward is warmup); transfers posted as Megatron's non-overlapped path posts them.
This module imports nothing heavy: flag validation uses its rules before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

Slot = tuple[int, int]  # (micro-batch, model chunk)


@dataclass(frozen=True)
class Work:
    kind: str  # "forward" or "backward"
    micro_batch: int
    chunk: int = 0

    @property
    def slot(self) -> Slot:
        return self.micro_batch, self.chunk


@dataclass(frozen=True)
class Transfer:
    send_next: Slot | None = None
    send_prev: Slot | None = None
    recv_prev: Slot | None = None
    recv_next: Slot | None = None

    def is_empty(self) -> bool:
        return self.send_next is None and self.send_prev is None and self.recv_prev is None and self.recv_next is None


@dataclass(frozen=True)
class Position:
    """Where a rank sits: pipeline size, its rank, model chunks per rank."""

    pp_size: int
    pp_rank: int
    num_chunks: int = 1

    @property
    def is_first_rank(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def is_first_virtual_stage(self, chunk: int) -> bool:
        return self.is_first_rank and chunk == 0

    def is_last_virtual_stage(self, chunk: int) -> bool:
        return self.is_last_rank and chunk == self.num_chunks - 1


def _plan(*steps) -> list:
    return [s for s in steps if s is not None and not (isinstance(s, Transfer) and s.is_empty())]


# ---- no pipelining and 1F1B ----------------------------------------------------------------
def no_pipelining_plan(num_micro_batches: int) -> list:
    plan = []
    for i in range(num_micro_batches):
        plan += [Work("forward", i), Work("backward", i)]
    return plan


def one_f_one_b_warmup(pp_size: int, pp_rank: int, num_micro_batches: int) -> int:
    return min(pp_size - pp_rank - 1, num_micro_batches)


def one_f_one_b_plan(pos: Position, num_micro_batches: int) -> list:
    m, first, last = num_micro_batches, pos.is_first_rank, pos.is_last_rank
    warmup = one_f_one_b_warmup(pos.pp_size, pos.pp_rank, m)
    steady = m - warmup
    receive_input = (lambda i: None if first else Transfer(recv_prev=(i, 0)))
    plan = []
    for i in range(warmup):
        plan += _plan(receive_input(i), Work("forward", i), None if last else Transfer(send_next=(i, 0)))
    if steady > 0:
        plan += _plan(receive_input(warmup))
    for j in range(steady):
        f = warmup + j
        plan += _plan(Work("forward", f), None if last else Transfer(send_next=(f, 0), recv_next=(j, 0)),
                      Work("backward", j),
                      Transfer(send_prev=None if first else (j, 0),
                               recv_prev=None if first or j == steady - 1 else (f + 1, 0)))
    for j in range(steady, m):
        plan += _plan(None if last else Transfer(recv_next=(j, 0)), Work("backward", j),
                      None if first else Transfer(send_prev=(j, 0)))
    return plan


def forward_only_plan(pos: Position, num_micro_batches: int) -> list:
    """Evaluation with one chunk per rank: receive, forward, send, micro-batch by micro-batch."""
    plan = []
    for i in range(num_micro_batches):
        plan += _plan(None if pos.is_first_rank else Transfer(recv_prev=(i, 0)), Work("forward", i),
                      None if pos.is_last_rank else Transfer(send_next=(i, 0)))
    return plan


# ---- interleaved 1F1B ----------------------------------------------------------------------
def schedule_table(num_micro_batches: int, num_chunks: int, group_size: int) -> list[Slot]:
    """Megatron's order of the forward virtual micro-batches: (micro-batch, chunk) per index.
    E.g. M=5, V=2, G=3: (0,0) (1,0) (2,0) (0,1) (1,1) (2,1) (3,0) (4,0) (3,1) (4,1)."""
    table = []
    for start in range(0, num_micro_batches, group_size):
        end = min(start + group_size, num_micro_batches)
        table += [(mb, chunk) for chunk in range(num_chunks) for mb in range(start, end)]
    return table


def interleaved_warmup(pp_size: int, pp_rank: int, num_micro_batches: int, num_chunks: int, group_size: int) -> int:
    return min((pp_size - pp_rank - 1) * 2 + (num_chunks - 1) * group_size, num_micro_batches * num_chunks)


class _Interleaving:
    """Megatron's bookkeeping for one rank of the interleaved schedule."""

    def __init__(self, pos: Position, num_micro_batches: int, group_size: int):
        self.pos = pos
        self.table = schedule_table(num_micro_batches, pos.num_chunks, group_size)
        self.total = len(self.table)
        # Received tensors of one chunk arrive in micro-batch order: count them to name them.
        self.activations_received = [0] * pos.num_chunks
        self.gradients_received = [0] * pos.num_chunks

    def forward_slot(self, k: int) -> Slot:
        return self.table[k]

    def backward_slot(self, k: int) -> Slot:
        mb, chunk = self.table[k]
        return mb, self.pos.num_chunks - 1 - chunk

    def _chunk(self, k: int, forward: bool) -> int:
        slot = self.forward_slot(k % self.total) if forward else self.backward_slot(k % self.total)
        return slot[1]

    def receives_after(self, k: int, forward: bool) -> int | None:
        """The chunk whose input (forward) or output gradient (backward) this rank receives in
        the transfer after virtual micro-batch k, or None (Megatron's recv_tensor_from_previous_stage).
        The rank that leads in that direction (first rank forward, last backward) is PP - 1 virtual
        micro-batches ahead of the rank that feeds it through the ring."""
        pos = self.pos
        leading = pos.is_first_rank if forward else pos.is_last_rank
        if not leading:
            return self._chunk(k + 1, forward)
        if k < pos.pp_size - 1:
            return None  # the ring's other end has produced nothing yet
        sender_chunk = self._chunk(k - (pos.pp_size - 1), forward)
        if sender_chunk == (pos.num_chunks - 1 if forward else 0):
            return None  # the last virtual stage sends no activation (the first, no gradient)
        return sender_chunk + 1 if forward else sender_chunk - 1

    @staticmethod
    def _name_next(received: list[int], chunk: int | None) -> Slot | None:
        """The slot of chunk `chunk`'s next received tensor (they arrive in micro-batch order)."""
        if chunk is None:
            return None
        received[chunk] += 1
        return received[chunk] - 1, chunk

    def name_activation(self, chunk: int | None) -> Slot | None:
        return self._name_next(self.activations_received, chunk)

    def name_gradient(self, chunk: int | None) -> Slot | None:
        return self._name_next(self.gradients_received, chunk)

    def output_to_send(self, k: int) -> Slot | None:
        slot = self.forward_slot(k)
        return None if self.pos.is_last_virtual_stage(slot[1]) else slot

    def input_grad_to_send(self, k: int) -> Slot | None:
        slot = self.backward_slot(k)
        return None if self.pos.is_first_virtual_stage(slot[1]) else slot


def interleaved_plan(pos: Position, num_micro_batches: int, group_size: int, forward_only: bool = False) -> list:
    s = _Interleaving(pos, num_micro_batches, group_size)
    total = s.total
    warmup = total if forward_only else interleaved_warmup(pos.pp_size, pos.pp_rank, num_micro_batches,
                                                           pos.num_chunks, group_size)
    all_warmup = warmup == total
    remaining = total - warmup
    plan = _plan(None if pos.is_first_rank else Transfer(recv_prev=s.name_activation(0)))

    for k in range(warmup):
        plan.append(Work("forward", *s.forward_slot(k)))
        recv_chunk = None if k == total - 1 else s.receives_after(k, forward=True)
        recv_grad = None
        if k == warmup - 1 and not forward_only and not all_warmup and not pos.is_last_rank:
            recv_grad = s.name_gradient(pos.num_chunks - 1)  # the first backward's output gradient
        plan += _plan(Transfer(send_next=s.output_to_send(k), recv_prev=s.name_activation(recv_chunk),
                               recv_next=recv_grad))

    for k in range(remaining):
        f = k + warmup
        plan += [Work("forward", *s.forward_slot(f)), Work("backward", *s.backward_slot(k))]
        recv_chunk = None if k == remaining - 1 else s.receives_after(f, forward=True)
        plan += _plan(Transfer(send_next=s.output_to_send(f), send_prev=s.input_grad_to_send(k),
                               recv_prev=s.name_activation(recv_chunk),
                               recv_next=s.name_gradient(s.receives_after(k, forward=False))))

    if forward_only:
        return plan
    if all_warmup and not pos.is_last_rank:
        plan.append(Transfer(recv_next=s.name_gradient(pos.num_chunks - 1)))
    for k in range(remaining, total):
        plan.append(Work("backward", *s.backward_slot(k)))
        recv_chunk = None if k == total - 1 else s.receives_after(k, forward=False)
        plan += _plan(Transfer(send_prev=s.input_grad_to_send(k), recv_next=s.name_gradient(recv_chunk)))
    return plan


def train_plan(pos: Position, num_micro_batches: int, group_size: int | None = None) -> list:
    """The plan of one training step for this rank (Megatron's choice of schedule)."""
    if pos.pp_size == 1:
        return no_pipelining_plan(num_micro_batches)
    if pos.num_chunks == 1:
        return one_f_one_b_plan(pos, num_micro_batches)
    return interleaved_plan(pos, num_micro_batches, group_size or pos.pp_size)


def eval_plan(pos: Position, num_micro_batches: int, group_size: int | None = None) -> list:
    """The plan of one forward-only (evaluation) step."""
    if pos.num_chunks == 1:
        return forward_only_plan(pos, num_micro_batches)
    return interleaved_plan(pos, num_micro_batches, group_size or pos.pp_size, forward_only=True)
