"""`goldtron test` owns the processes it starts: SIGINT, SIGTERM or SIGHUP sent to the gate stop
the running phase's whole process tree, and the gate exits 128 + the signal's number (130, 143,
129) with one line that says where it stopped.

Why an exception: the handler runs in the main thread wherever it is (almost always waiting for
a phase). Raising there lets `run_phase` kill the tree it started and `run_test` write an
"interrupted" summary, with no state kept in globals. The first signal raises; later ones are
ignored so a second Ctrl-C cannot cut the tree kill short (the kill itself is bounded).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class GateInterrupted(BaseException):
    """A stop signal reached the gate. BaseException, as KeyboardInterrupt: no `except Exception`
    on the way may swallow it. The phase fields are filled in as it travels up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.case: str | None = None
        self.phase: str | None = None
        self.last_iteration: int | None = None
        self.output_dir: Path | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def where(self) -> str:
        if self.phase is None:
            return f"case {self.case}, between phases" if self.case else "before any phase started"
        reached = "no iteration logged yet" if self.last_iteration is None else f"last iteration {self.last_iteration}"
        return f"case {self.case}, phase {self.phase}, {reached}"

    def line(self) -> str:
        return f"INTERRUPTED by {self.signal_name}: {self.where()}; every process the gate started is stopped"


@contextmanager
def stop_on_signals():
    """Turn HANDLED_SIGNALS into GateInterrupted in the main thread for the duration of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    raised = threading.Event()  # per block, not global: nested or repeated runs start clean

    def handler(signum, frame):
        if raised.is_set():
            return
        raised.set()
        raise GateInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def report_interrupt(interrupted: GateInterrupted, output_dir: Path | None) -> int:
    """Print the one line, leave an "interrupted" summary (and junit) where the reports go, and
    return the exit code. A stale summary from an earlier run must not be read as this run's."""
    from goldtron.gate.report import CaseReport, write_reports

    print(interrupted.line(), flush=True)
    folder = interrupted.output_dir or output_dir
    if folder is not None:
        write_reports(CaseReport(case=interrupted.case or "goldtron test", errors=[interrupted.line()]), Path(folder))
    return interrupted.exit_code
