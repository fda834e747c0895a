"""The trainer keeps freed CPU tensor memory for reuse (training/cpu_malloc.py).

mallopt changes the whole process, so each measurement runs in a fresh Python process of its own.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from goldtron.training.cpu_malloc import user_tunes_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MB tensor (above glibc's largest mmap threshold, like the LM
# head's logits) 40 times; report the minor page faults of the last 20 rounds. Reused memory settles
# within the first rounds: each free lands in a hole that freed small objects (glibc's per-thread
# cache holds 7 of a size) keep apart from the heap's top, until the cache is full; how many rounds
# that takes depends on the heap the process starts with (seen: 0 to 3 faulting rounds of the 20).
FAULTS_OF_REPEATED_BIG_TENSORS = """
import json, resource, sys, torch
from goldtron.training.cpu_malloc import keep_freed_cpu_memory_for_reuse
switched = keep_freed_cpu_memory_for_reuse() if sys.argv[1] == "reuse" else False
for _ in range(20):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 * 2**20).fill_(1.0)
print(json.dumps({"switched": switched, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_BIG_TENSORS, mode], capture_output=True,
                          text=True, timeout=120, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere malloc is left as it is")
def test_freed_big_tensors_are_reused_instead_of_page_faulted_in_again():
    default = _faults("default")
    reuse = _faults("reuse")
    assert reuse["switched"]
    # 20 fresh 64 MB blocks fault in ~20 x 16384 pages; reused ones at most a few rounds' worth
    # while the heap settles. Without reuse every round faults, so a quarter still fails it.
    assert default["faults"] > 20 * 16384 * 0.9, default
    assert reuse["faults"] < default["faults"] / 4, (reuse, default)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere malloc is left as it is")
def test_a_user_tuned_malloc_is_left_alone():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    assert _faults("reuse", env)["switched"] is False


def test_malloc_settings_of_the_user_are_recognised():
    assert user_tunes_malloc({"MALLOC_ARENA_MAX": "2"})
    assert user_tunes_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not user_tunes_malloc({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "PATH": "/bin"})
