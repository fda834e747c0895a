"""Issue 14, "What must be shown" 1: SIGINT, SIGTERM or SIGHUP sent to the gate process alone (not
its process group) stops every process of the run within 10 s; the gate exits 128 + the signal
with one line naming the case, the phase and the last iteration; summary.md says interrupted;
`--record` wrote no golden. One gate launch per signal, on the 2-rank fake trainer slowed by a
sleep per step so the signal lands in the middle of the phase.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import write_case

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STOP_WITHIN_S = 10.0
PROGRESS = re.compile(r"iteration\s+3/")


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return None if fields[0] == "Z" else int(fields[19])


def _tree(pid: int) -> dict[int, int]:
    """Every descendant of `pid` with its start time (a pid reused later is not the same process)."""
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                pids = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            for child in pids:
                start = _start_time(child)
                if start is not None:
                    found[child] = start
                    frontier.append(child)
    return found


def _still_running(tree: dict[int, int]) -> list[int]:
    return [pid for pid, start in tree.items() if _start_time(pid) == start]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_gate_stops_the_whole_run(tmp_path, sig):
    case = write_case(tmp_path / "slow_case", train_iters=400, extra_args={"--fake-sleep-seconds": 0.1})
    out = tmp_path / "out"
    log = out / "repeat_1" / "run1" / "torchrun.log"
    gate = subprocess.Popen([sys.executable, "-m", "goldtron", "test", str(case), "--record", "--output-dir", str(out),
                             "--no-plot"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tree: dict[int, int] = {}
    try:
        _wait_for(lambda: gate.poll() is not None or (log.is_file() and PROGRESS.search(log.read_text())), 90,
                  "the phase to reach iteration 3")
        assert gate.poll() is None, gate.communicate()[0]
        tree = _tree(gate.pid)
        assert len(tree) >= 3, tree  # torchrun and its two ranks (at least)
        os.kill(gate.pid, sig)  # the gate alone: torchrun and the ranks are in sessions of their own
        signalled = time.monotonic()
        text = gate.communicate(timeout=STOP_WITHIN_S + 20)[0]
        _wait_for(lambda: not _still_running(tree), max(STOP_WITHIN_S - (time.monotonic() - signalled), 0.1),
                  f"processes {_still_running(tree)} of the run to end")
    finally:
        for pid in _still_running(tree):  # never leave the run behind, whatever failed
            os.kill(pid, signal.SIGKILL)
        if gate.poll() is None:
            gate.kill()
            gate.wait(timeout=10)

    assert gate.returncode == 128 + sig, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"INTERRUPTED by {sig.name}: case slow_case, phase run1, last iteration "), text[-3000:]
    assert int(last.split("last iteration ")[1].split(";")[0]) >= 3
    assert "INTERRUPTED" in (out / "summary.md").read_text()
    assert not list(case.glob("golden_values_*")), "--record wrote a golden although the run was interrupted"
