"""Collectives that skip single-rank groups, and the autograd-aware ones tensor parallelism needs.

A `None` group means "this dimension has size 1": every function here is then the identity,
so a TP1/PP1/DP1 run pays for no communication at all.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
import torch.distributed as dist

RELEASE_WAIT_LIMIT_S = 1.0
# A real sleep, not sleep(0): with sleep(0) this thread takes the GIL straight back and the worker
# waits out the interpreter's 5 ms switch interval (measured: steps ~10% slower, TP2 on 2 ranks).
SPIN_SLEEP_S = 1e-5


def _references(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(C++ references, Python references) of each tensor; see BackendRelease.wait."""
    return [(tensors[i]._use_count(), sys.getrefcount(tensors[i])) for i in range(len(tensors))]


class BackendRelease:
    """Whether a collective returns only once the backend let go of its tensors. One per process,
    held by ParallelState and passed to every collective here; the CPU memory counter
    (training/memory.py) switches it on while it runs. The wait costs ~1% of a step with many
    small collectives (measured: TP2, 83 collectives a step, 40 us each), so runs that do not
    count memory skip it."""

    def __init__(self) -> None:
        self.wanted = 0  # CPU memory counters running: only they need the wait
        self.enabled = True  # off for good once a backend kept references past RELEASE_WAIT_LIMIT_S

    def want_exact_frees(self, on: bool) -> None:
        self.wanted += 1 if on else -1

    def wait(self, tensors: list[torch.Tensor], before: list[tuple[int, int]]) -> None:
        """Return once the backend holds no reference to `tensors` (`before`: _references(tensors)
        taken before the collective, on the same list).

        gloo runs a collective on a worker thread, which keeps references to the tensors for a
        moment after the caller's wait() has returned, and when it drops the last C++ one it also
        drops a reference to the tensor's Python object (torch keeps the Python object alive while
        C++ holds the tensor). A tensor the caller lets go of inside that window is therefore freed
        on the worker thread, at a moment that differs from run to run, and the CPU memory counter
        reported different bytes for identical runs. Waiting here (almost always zero iterations)
        keeps the caller the last owner: every storage is freed at the same point of the program on
        every run.
        """
        if not (self.wanted and self.enabled):
            return
        deadline = None
        for i, (uses, refs) in enumerate(before):  # indexing, not iterating: no extra reference to count
            while tensors[i]._use_count() > uses or sys.getrefcount(tensors[i]) > refs:
                if deadline is None:
                    deadline = time.monotonic() + RELEASE_WAIT_LIMIT_S
                elif time.monotonic() > deadline:  # a backend that keeps references: do not stall every call
                    self.enabled = False
                    warnings.warn("the distributed backend keeps references to collective tensors; "
                                  "CPU memory metrics may differ between identical runs", stacklevel=2)
                    return
                time.sleep(SPIN_SLEEP_S)  # releases the GIL, which the worker needs to drop its references


def all_reduce_(tensor: torch.Tensor, group, release: BackendRelease, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if group is not None:
        tensors = [tensor]
        before = _references(tensors)
        dist.all_reduce(tensor, op=op, group=group)
        release.wait(tensors, before)
    return tensor


def all_gather_(outputs: list[torch.Tensor], tensor: torch.Tensor, group, release: BackendRelease) -> list[torch.Tensor]:
    """dist.all_gather into `outputs` (group None: every rank), released like all_reduce_'s tensors."""
    tensors = [*outputs, tensor]
    before = _references(tensors)
    dist.all_gather(outputs, tensor, group=group)
    release.wait(tensors, before)
    return outputs


class PendingCollective:
    """An asynchronous collective on `tensors`, held here until `wait`, which then also waits for
    the backend to let go of them (BackendRelease), as the synchronous collectives do.

    Build `tensors` inline (`PendingCollective(fn, [torch.empty(n), flat], ...)`), keeping no other
    reference to them: the references counted before the launch must be the ones left at `wait`.
    `collective(*tensors)` issues the collective with async_op=True and returns its work handle.
    """

    def __init__(self, collective, tensors: list[torch.Tensor], release: BackendRelease):
        self.tensors = tensors
        self.release = release
        self.before = _references(tensors)
        self.work = collective(*tensors)

    def wait(self) -> list[torch.Tensor]:
        self.work.wait()
        self.release.wait(self.tensors, self.before)
        return self.tensors


def all_reduce_flat_(tensors: list[torch.Tensor], group, release: BackendRelease, op=dist.ReduceOp.SUM) -> None:
    """All-reduce many tensors as one flat buffer: one collective instead of many.

    gloo's per-call latency dominates small tensors (DESIGN.md: ~6 ms per call with 4 ranks
    on 2 cores), so gradients are reduced in one bucket per dtype.
    """
    if group is None or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for same in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        all_reduce_(flat, group, release, op)
        offset = 0
        for t in same:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


class _CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; all-reduce of the input-gradient backward (column-parallel input)."""

    @staticmethod
    def forward(ctx, x, group, release):
        ctx.group, ctx.release = group, release
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_(grad.contiguous(), ctx.group, ctx.release), None, None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """All-reduce forward (row-parallel output); identity backward."""

    @staticmethod
    def forward(ctx, x, group, release):
        # A fresh buffer: the input may still be needed by autograd elsewhere.
        return all_reduce_(x.clone(memory_format=torch.contiguous_format), group, release)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def copy_to_tensor_parallel(x: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    return x if group is None else _CopyToTensorParallel.apply(x, group, release)


def reduce_from_tensor_parallel(x: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    return x if group is None else _ReduceFromTensorParallel.apply(x, group, release)



def _flat_collective(collective, output: torch.Tensor, source: torch.Tensor, group,
                     release: BackendRelease) -> torch.Tensor:
    """collective(output, source) on `group`, released like all_reduce_'s; a copy on one rank."""
    if group is None:
        return output.copy_(source)
    tensors = [output, source]
    before = _references(tensors)
    collective(output, source, group=group)
    release.wait(tensors, before)
    return output


def reduce_scatter_(output: torch.Tensor, flat: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    """Sum `flat` over `group`; this rank keeps its contiguous 1/size of the result in `output`."""
    return _flat_collective(dist.reduce_scatter_single, output, flat, group, release)


def all_gather_flat_(output: torch.Tensor, shard: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    """Concatenate every rank's `shard` (rank order) into `output`."""
    return _flat_collective(dist.all_gather_single, output, shard, group, release)


def all_to_all_flat_(output: torch.Tensor, send: torch.Tensor, group, release: BackendRelease) -> torch.Tensor:
    """Rank j gets the j-th 1/size of `send` (along dim 0) of every rank, in rank order, in `output`."""
    return _flat_collective(dist.all_to_all_single, output, send, group, release)
