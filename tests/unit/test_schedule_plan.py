"""The schedules' plans checked without a process: Megatron's warmup counts and schedule table,
and, for every rank of many (PP, V, M, G) combinations, that the plans of all ranks fit together:
- every send meets the receive that expects that very tensor (same micro-batch, the right chunk),
  in order, per direction; also when, as NCCL does, one channel carries both directions (PP 2);
- no rank waits forever when every batch completes only once all its partners posted theirs
  (rendezvous, the strictest p2p there is);
- each rank runs the forward and the backward of every (micro-batch, chunk) once, a backward after
  its forward, with its input / output gradient received first where another rank makes them.
"""

from __future__ import annotations

import itertools

import pytest

from goldtron.parallel.schedule_plan import (
    Position, Transfer, Work, eval_plan, interleaved_warmup, one_f_one_b_warmup, schedule_table, train_plan,
)


def test_schedule_table_is_megatrons_example():
    # megatron/core/pipeline_parallel/schedules.py: "PP2 N3M5 with VP2".
    table = schedule_table(5, 2, 3)
    assert [mb for mb, _ in table] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert [chunk for _, chunk in table] == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_schedule_table_default_group_is_depth_first():
    # ModelParallelConfig's docstring: PP2 VP2, group 2, 4 micro-batches: rank 0 runs 0 1 0 1 2 3 2 3.
    assert [mb for mb, _ in schedule_table(4, 2, 2)] == [0, 1, 0, 1, 2, 3, 2, 3]


def test_warmup_counts_are_megatrons():
    assert [one_f_one_b_warmup(4, r, 8) for r in range(4)] == [3, 2, 1, 0]
    assert one_f_one_b_warmup(4, 0, 2) == 2  # capped at M
    # (PP - r - 1) x 2 + (V - 1) x G, capped at M x V.
    assert [interleaved_warmup(4, r, 8, 2, 4) for r in range(4)] == [10, 8, 6, 4]
    assert [interleaved_warmup(2, r, 4, 2, 2) for r in range(2)] == [4, 2]
    assert interleaved_warmup(4, 0, 4, 2, 4) == 8  # 6 + 4 > 8 = M x V: every forward is warmup


def _messages(plans: list[list], pp: int, merged: bool):
    """Per channel, the tensors sent (as the receiver names them) and the receives, in order."""
    sent, expected = {}, {}
    for rank, plan in enumerate(plans):
        nxt, prv = (rank + 1) % pp, (rank - 1) % pp
        for step in (s for s in plan if isinstance(s, Transfer)):
            if step.send_next is not None:
                mb, chunk = step.send_next
                sent.setdefault(_channel(rank, nxt, "act", merged), []).append(
                    ("act", (mb, chunk + 1 if rank == pp - 1 else chunk)))
            if step.send_prev is not None:
                mb, chunk = step.send_prev
                sent.setdefault(_channel(rank, prv, "grad", merged), []).append(
                    ("grad", (mb, chunk - 1 if rank == 0 else chunk)))
            if step.recv_prev is not None:
                expected.setdefault(_channel(prv, rank, "act", merged), []).append(("act", step.recv_prev))
            if step.recv_next is not None:
                expected.setdefault(_channel(nxt, rank, "grad", merged), []).append(("grad", step.recv_next))
    return sent, expected


def _channel(src: int, dst: int, kind: str, merged: bool):
    return (src, dst) if merged else (src, dst, kind)


def _ops(step: Transfer, rank: int, pp: int, merged: bool) -> list:
    """The operations of one transfer as (channel, 'send'/'recv'), in the order p2p.py posts them."""
    nxt, prv = (rank + 1) % pp, (rank - 1) % pp
    ops = []
    if step.recv_prev is not None:
        ops.append((_channel(prv, rank, "act", merged), "recv"))
    if step.send_next is not None:
        ops.append((_channel(rank, nxt, "act", merged), "send"))
    if step.send_prev is not None:
        ops.append((_channel(rank, prv, "grad", merged), "send"))
    if step.recv_next is not None:
        ops.append((_channel(nxt, rank, "grad", merged), "recv"))
    return ops


def _runs_to_completion(plans: list[list], pp: int, merged: bool) -> bool:
    """Rendezvous simulation: an operation completes once its partner (the same position in the
    same channel) is posted too; a rank leaves its batch when all of its operations completed."""
    batches = []
    for rank, plan in enumerate(plans):
        numbered, count = [], {}
        for step in (s for s in plan if isinstance(s, Transfer)):
            ops = []
            for channel, side in _ops(step, rank, pp, merged):
                ops.append((channel, side, count.get((channel, side), 0)))
                count[(channel, side)] = count.get((channel, side), 0) + 1
            numbered.append(ops)
        batches.append(numbered)
    current, completed = [0] * pp, set()
    while True:
        posted = {op for r in range(pp) if current[r] < len(batches[r]) for op in batches[r][current[r]]}
        completed |= {op for op in posted if (op[0], "recv" if op[1] == "send" else "send", op[2]) in posted}
        finished = [r for r in range(pp) if current[r] < len(batches[r])
                    and all(op in completed for op in batches[r][current[r]])]
        if not finished:
            return all(current[r] == len(batches[r]) for r in range(pp))
        for r in finished:
            current[r] += 1


def _check_each_rank_does_its_work(plan: list, pos: Position, m: int, training: bool) -> None:
    received_inputs, received_grads, forwards, backwards = set(), set(), [], []
    for step in plan:
        if isinstance(step, Transfer):
            if step.recv_prev is not None:
                received_inputs.add(step.recv_prev)
            if step.recv_next is not None:
                received_grads.add(step.recv_next)
            assert step.send_next is None or step.send_next in forwards
            assert step.send_prev is None or step.send_prev in backwards
        elif step.kind == "forward":
            assert pos.is_first_virtual_stage(step.chunk) or step.slot in received_inputs, (pos, step)
            forwards.append(step.slot)
        else:
            assert step.slot in forwards, (pos, step)
            assert pos.is_last_virtual_stage(step.chunk) or step.slot in received_grads, (pos, step)
            backwards.append(step.slot)
    every = sorted(itertools.product(range(m), range(pos.num_chunks)))
    assert sorted(forwards) == every
    assert sorted(backwards) == (every if training else [])
    for chunk in range(pos.num_chunks):  # each chunk sees its micro-batches in order
        assert [mb for mb, c in forwards if c == chunk] == list(range(m))


def _valid_interleaved_cases():
    for pp, v, m in itertools.product((2, 3, 4), (2, 3), range(1, 11)):
        for g in range(pp, m + 1):
            if m % g == 0 or m % g >= pp:
                yield pp, v, m, g


CASES = [(pp, 1, m, None) for pp in (2, 3, 4) for m in (1, 2, 3, 4, 5, 8)] + list(_valid_interleaved_cases())


@pytest.mark.parametrize("pp,v,m,g", CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_rank_plan_fits_the_others(pp, v, m, g, training):
    positions = [Position(pp, r, v) for r in range(pp)]
    plans = [(train_plan if training else eval_plan)(pos, m, g) for pos in positions]
    for pos, plan in zip(positions, plans):
        _check_each_rank_does_its_work(plan, pos, m, training)
    for merged in (False, True):  # separate tags (gloo), then one ordered channel per pair (NCCL)
        sent, expected = _messages(plans, pp, merged)
        assert sent == expected
        assert _runs_to_completion(plans, pp, merged)


def test_no_pipelining_plan_alternates():
    assert train_plan(Position(1, 0), 2) == [Work("forward", 0), Work("backward", 0),
                                             Work("forward", 1), Work("backward", 1)]


def test_interleaved_first_rank_runs_the_table_order():
    plan = train_plan(Position(2, 0, 2), 4, 2)
    forwards = [s.slot for s in plan if isinstance(s, Work) and s.kind == "forward"]
    backwards = [s.slot for s in plan if isinstance(s, Work) and s.kind == "backward"]
    assert forwards == schedule_table(4, 2, 2)
    assert backwards == [(0, 1), (1, 1), (0, 0), (1, 0), (2, 1), (3, 1), (2, 0), (3, 0)]


def test_the_checks_catch_plans_that_do_not_fit():
    """The checks above can fail: a rank that takes two of its transfers in the other order
    receives tensors under the wrong names, and two ranks that each wait to receive before they
    send wait forever."""
    plans = [train_plan(Position(2, r, 2), 4, 2) for r in range(2)]
    transfers = [i for i, s in enumerate(plans[1]) if isinstance(s, Transfer) and s.recv_prev is not None]
    a, b = transfers[0], transfers[1]
    plans[1][a], plans[1][b] = plans[1][b], plans[1][a]
    sent, expected = _messages(plans, 2, merged=False)
    assert sent != expected
    waits_first = [[Transfer(recv_next=(0, 0)), Transfer(send_next=(0, 0))],
                   [Transfer(recv_prev=(0, 0)), Transfer(send_prev=(0, 0))]]
    assert _messages(waits_first, 2, merged=False)[0] == _messages(waits_first, 2, merged=False)[1]
    assert not _runs_to_completion(waits_first, 2, merged=False)
