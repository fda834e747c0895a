import pytest
import torch
import torch.distributed as dist

from checkpoint.shared_saves import SharedSaves
from goldtron.parallel.state import ParallelState


@pytest.fixture
def one_rank():
    """A one-process gloo group and its ParallelState, for checkpoint code run in-process."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def shared_saves(request, tmp_path_factory):
    """The SHARED_SAVES and SHARED_LOADS of every collected test module: the saving runs of one
    process count in one launch, then the loading runs (checkpoint/shared_saves.py)."""
    modules = dict.fromkeys(item.module for item in request.session.items
                            if hasattr(getattr(item, "module", None), "SHARED_SAVES"))
    return SharedSaves(tmp_path_factory.mktemp("shared_saves"),
                       [(module.__name__, module.SHARED_SAVES, getattr(module, "SHARED_LOADS", {})) for module in modules])
