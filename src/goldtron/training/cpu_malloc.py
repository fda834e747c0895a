"""Freed CPU tensor memory kept for reuse, as CUDA's caching allocator keeps it on a GPU.

torch allocates CPU tensors with glibc's malloc. glibc serves every block above its mmap threshold
(32 MB at most) with a fresh mmap and unmaps it when freed, so each such block is page-faulted in
and zeroed by the kernel again every time. The LM head's fp32 logits and their gradient are such
blocks (the flagship's last stage: 512 x 25152 floats, 51 MB, several per micro-batch): a 4-rank
flagship step spent about a fifth of its CPU time in the kernel. Serving every block from the heap
(M_MMAP_MAX 0) and never trimming the heap's free top (M_TRIM_THRESHOLD at its maximum) lets the
next micro-batch reuse the same pages (docs/performance.md: the flagship's step 12% shorter, its
kernel time halved). Resident memory then stays at the run's peak plus malloc's fragmentation, as
a GPU's reserved memory does (measured: a last-stage rank 850-970 MB against 655 MB, flat after
the first iterations); the gate's memory metrics count tensor bytes (training/memory.py), not
pages, so they are unchanged, and so are the bits (same kernels, same 64-byte alignment).

glibc only (Linux); elsewhere, and where the user tunes malloc through its environment variables,
malloc is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes an int


def user_tunes_malloc(environ) -> bool:
    """MALLOC_*_ variables or malloc tunables in GLIBC_TUNABLES: the user's settings win."""
    return any(k.startswith("MALLOC_") for k in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def keep_freed_cpu_memory_for_reuse() -> bool:
    """Switch glibc's malloc to heap-only, never-trimmed allocation; True if it was switched."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_tunes_malloc(os.environ):
        return False
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success, 0 on error.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
