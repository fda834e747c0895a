"""A rank's fast exit (training/fast_exit.py) keeps what a normal exit would not lose."""

from __future__ import annotations

import subprocess
import sys

# A non-daemon thread still writing, an atexit handler and unflushed buffered output when the
# process leaves with code 3.
LEAVE_WITH_WORK_IN_FLIGHT = """
import atexit, sys, threading, time
from goldtron.training.fast_exit import exit_now
path = sys.argv[1]
def write_late():
    time.sleep(0.5)
    with open(path, "w") as f:
        f.write("written")
threading.Thread(target=write_late).start()
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("buffered line\\n")
exit_now(3)
"""


def test_fast_exit_finishes_threads_runs_atexit_flushes_and_keeps_the_code(tmp_path):
    out = tmp_path / "late.txt"
    done = subprocess.run([sys.executable, "-c", LEAVE_WITH_WORK_IN_FLIGHT, str(out)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3
    assert out.read_text() == "written"
    assert done.stdout.splitlines() == ["buffered line", "atexit ran"]
