"""Live progress of the training phases: phase, iteration k/N, current loss, elapsed, ETA.

Progress is read from the trainer's Megatron-style stdout line. On a terminal it is a rich
live line; in a log file (CI) it prints one line per phase start/end and every 10% of a phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from goldtron.trainer_contract import ITERATION_PATTERN, LOSS_PATTERN


@dataclass
class ProgressLine:
    iteration: int
    total: int
    loss: str | None


def parse_progress(line: str) -> ProgressLine | None:
    match = ITERATION_PATTERN.search(line)
    if not match:
        return None
    loss = LOSS_PATTERN.search(line)
    return ProgressLine(int(match.group(1)), int(match.group(2)), loss.group(1) if loss else None)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class PhaseProgress:
    """Progress of the phase that is running; `update` is called from the log-reading thread."""

    def __init__(self, console=None, live: bool | None = None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.live_mode = self.console.is_terminal if live is None else live
        self._live = None
        self.phase = ""
        self.started = 0.0
        self.first_step_at: tuple[float, int] | None = None
        self.current: ProgressLine | None = None
        self._last_printed_decile = -1

    def start(self, phase: str) -> None:
        self.phase, self.started, self.current, self.first_step_at = phase, time.monotonic(), None, None
        self._last_printed_decile = -1
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()
        else:
            self.console.print(f"[{self.phase}] started", soft_wrap=True, markup=False)

    def eta(self) -> float | None:
        """Seconds left, from the pace since the first logged step (startup excluded)."""
        if self.current is None or self.first_step_at is None:
            return None
        began, first = self.first_step_at
        done = self.current.iteration - first
        if done <= 0:
            return None
        return (time.monotonic() - began) / done * (self.current.total - self.current.iteration)

    def render(self) -> str:
        elapsed = _clock(time.monotonic() - self.started)
        if self.current is None:
            return f"{self.phase}: starting ranks ... elapsed {elapsed}"
        eta = self.eta()
        return (f"{self.phase}: iteration {self.current.iteration}/{self.current.total}"
                f" | lm loss {self.current.loss or '-'} | elapsed {elapsed}"
                f" | ETA {_clock(eta) if eta is not None else '-'}")

    def update(self, line: str) -> None:
        parsed = parse_progress(line)
        if parsed is None:
            return
        if self.first_step_at is None:
            self.first_step_at = (time.monotonic(), parsed.iteration)
        self.current = parsed
        if self._live is not None:
            self._live.update(self.render())
            return
        decile = 10 * parsed.iteration // max(parsed.total, 1)
        if decile > self._last_printed_decile:
            self._last_printed_decile = decile
            self.console.print(self.render(), soft_wrap=True, markup=False)

    def finish(self, outcome: str) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.console.print(f"[{self.phase}] {outcome} after {_clock(time.monotonic() - self.started)}",
                           soft_wrap=True, markup=False)

