import pytest
import torch
import torch.distributed as dist

from goldtron.parallel.state import ParallelState


@pytest.fixture
def one_rank():
    """A one-process gloo group and its ParallelState, for checkpoint code run in-process."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    dist.destroy_process_group()
