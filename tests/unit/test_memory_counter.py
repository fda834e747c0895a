"""The CPU storage counter (training/memory.py) and what keeps it the same on every run.

Identical runs used to differ by 8 to 300 bytes: a counted storage was sometimes freed on
another thread (a gloo worker thread finishing a collective, the --async-save thread), at a
moment that varies from run to run. These tests hold the counter to its arithmetic and the
collectives to "the caller is the last owner when the call returns".
"""

import threading

import pytest
import torch
import torch.distributed as dist

from goldtron.parallel import collectives
from goldtron.training.memory import CpuAllocationCounter


def test_counts_bytes_from_first_sight_to_free_and_keeps_the_peak():
    with CpuAllocationCounter() as counter:
        a = torch.zeros(1000)  # 4000 bytes
        b = a.view(10, 100)  # same storage: not counted twice
        c = torch.zeros(250, dtype=torch.float64)  # 2000 bytes
        assert counter.allocated == 6000
        del a, b
        assert counter.allocated == 2000
        del c
    assert (counter.allocated, counter.peak, counter.frees_elsewhere) == (0, 6000, 0)


def test_every_tensor_of_a_multi_output_op_is_counted_once():
    """Ops return a tensor, a named tuple (sort) or a list (split's views, unbind): each new storage
    counts once, a view of a counted one not at all."""
    x = torch.arange(1000, dtype=torch.float32)  # made before the counter: not counted
    with CpuAllocationCounter() as counter:
        values, indices = torch.sort(x, descending=True)  # 4000 + 8000 bytes
        assert counter.allocated == 12000
        parts = torch.split(values, 100)  # views of values
        rows = values.view(10, 100).unbind(0)  # views too
        assert counter.allocated == 12000
        del values, parts, rows
        assert counter.allocated == 8000
        del indices
    assert (counter.allocated, counter.peak) == (0, 12000)


def test_a_free_on_another_thread_is_counted_as_such():
    with CpuAllocationCounter() as counter:
        box = [torch.zeros(16)]
    thread = threading.Thread(target=box.clear)
    thread.start()
    thread.join()
    assert counter.allocated == 0 and counter.frees_elsewhere == 1


@pytest.fixture
def gloo_one_rank():
    """A one-process gloo group: gloo still runs each collective on a worker thread."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_collectives_return_once_the_backend_let_go_of_their_tensors(gloo_one_rank):
    """Before the fix, gloo's worker still held the tensor after ~15% of the calls here, and a
    tensor dropped right after the call (a norm, the loss pair) was freed on that thread."""
    release = collectives.BackendRelease()
    with CpuAllocationCounter(release) as counter:
        for _ in range(1000):
            t = torch.zeros(1, dtype=torch.float64)
            before = collectives._references([t])
            collectives.all_reduce_(t, gloo_one_rank, release)
            assert collectives._references([t]) == before
            del t
            outputs = [torch.empty(2)]
            local = torch.ones(2)
            before = collectives._references([*outputs, local])
            collectives.all_gather_(outputs, local, None, release)
            assert collectives._references([*outputs, local]) == before
            del outputs, local
    assert release.enabled
    assert counter.frees_elsewhere == 0 and counter.allocated == 0
