import sys
from pathlib import Path

import pytest

# Lets tests import the shared helpers as `support.*`.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_rank_state():
    """A 1-process gloo group (in memory; nothing to clash with), reused if one already exists,
    for model code run in-process (deferral and recompute tests)."""
    import torch
    import torch.distributed as dist

    from goldtron.parallel.state import ParallelState

    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    if started_here:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def shared_runs(request, tmp_path_factory):
    """The SHARED_RUNS of every collected test module, those of one process count in one launch
    (support/shared_runs.py)."""
    from support.shared_runs import SharedRuns  # support/ is importable once this file has run

    modules = dict.fromkeys(item.module for item in request.session.items
                            if hasattr(getattr(item, "module", None), "SHARED_RUNS"))
    return SharedRuns(tmp_path_factory.mktemp("shared_runs"),
                      [(module.__name__, module.SHARED_RUNS) for module in modules])
