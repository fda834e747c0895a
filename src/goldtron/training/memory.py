"""Allocated-bytes accounting: torch.cuda's counters on GPUs, an exact storage counter on CPUs.

torch has no CPU allocator statistics, and RSS is noisy. `CpuAllocationCounter` is a
TorchDispatchMode that sees every op's outputs: each storage seen for the first time adds its
bytes, and a weak reference's callback subtracts them when it is freed (torch keeps one Python
object per live storage, so the callback fires exactly at the free). The result is the same
number on every run: a metric the gate can hold to a golden value.

That holds only if every counted storage is freed on the training thread. The callback runs on
whichever thread drops the last reference, and a free on another thread lands at a moment that
differs from run to run: that was the "8 to 300 bytes" flicker between identical runs (gloo's
worker threads dropping collective tensors, parallel/collectives.py; the --async-save thread
dropping the RNG state, training/checkpointing.py). `frees_elsewhere` counts such frees, so a
test can tell when a new one appears.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from goldtron.parallel.collectives import BackendRelease
from goldtron.training.eager_torch import run_without_dynamo


class CpuAllocationCounter(TorchDispatchMode):
    """`release`: the process's BackendRelease (ParallelState.backend_release), switched on while
    the counter runs so collectives free their tensors on this thread; None where no collective runs."""

    def __init__(self, release: BackendRelease | None = None):
        super().__init__()
        # torch wraps every mode's __torch_dispatch__ for its compiler; an eager counter needs none.
        run_without_dynamo(type(self).__dict__["__torch_dispatch__"])
        self.release = release
        self.allocated = 0
        self.peak = 0
        # id of each counted live storage -> the weak reference whose callback uncounts it at the free
        self._live: dict[int, weakref.ref] = {}
        self._thread = threading.get_ident()  # the thread whose ops are counted (the mode is per thread)
        self.frees_elsewhere = 0  # counted storages freed on another thread (see the module docstring)

    def _free(self, key: int, nbytes: int) -> None:
        if self._live.pop(key, None) is not None:
            self.allocated -= nbytes
            if threading.get_ident() != self._thread:
                self.frees_elsewhere += 1

    def __enter__(self):
        if self.release is not None:
            self.release.want_exact_frees(True)
        return super().__enter__()

    def __exit__(self, *exc):
        if self.release is not None:
            self.release.want_exact_frees(False)
        return super().__exit__(*exc)

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        nbytes = storage.nbytes()
        # A plain weak reference, not weakref.finalize (its registry costs more per storage); its
        # callback runs at the same moment, when the storage is freed.
        self._live[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._free(key, nbytes))
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def track_existing(self, tensors) -> None:
        """Count tensors made before the counter started (parameters, optimizer state)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.track(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._track_outputs(out)
        return out

    def _track_outputs(self, out) -> None:
        """Every tensor of an op's output, in tree_flatten's order. An aten op returns a tensor, a
        (named) tuple or a list of them, or nothing; walked here directly, as tree_flatten's
        general pytree walk cost more than the rest of this counter (cProfile of a flagship-shaped
        last-stage rank, ~1600 ops a step)."""
        if isinstance(out, torch.Tensor):
            if not out.is_meta:
                self.track(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                self._track_outputs(item)


class MemoryStats:
    """allocated / max-allocated bytes for this rank, whatever the device."""

    def __init__(self, device: torch.device, enabled: bool, release: BackendRelease):
        self.device = device
        self.cpu_counter = CpuAllocationCounter(release) if enabled and device.type == "cpu" else None

    def __enter__(self):
        if self.cpu_counter is not None:
            self.cpu_counter.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cpu_counter is not None:
            self.cpu_counter.__exit__(*exc)

    def allocated(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return 0 if self.cpu_counter is None else self.cpu_counter.allocated

    def max_allocated(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return 0 if self.cpu_counter is None else self.cpu_counter.peak
