"""Per-rank record of what the pipeline schedule did and when: forward, backward, the deferred
weight-gradient drain, and time spent waiting on p2p transfers. Feeds the timers written to
TensorBoard and the pipeline timeline picture."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

KINDS = ("forward", "backward", "wgrad-drain", "p2p-wait", "grad-reduce", "optimizer")


@dataclass
class Span:
    kind: str
    micro_batch: int  # -1 when the span is not about one micro-batch
    start: float
    end: float


@dataclass
class StepTrace:
    start: float = 0.0
    end: float = 0.0
    spans: list[Span] = field(default_factory=list)

    @contextmanager
    def span(self, kind: str, micro_batch: int = -1):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spans.append(Span(kind, micro_batch, t0, time.perf_counter()))

    def totals(self) -> dict[str, float]:
        """Seconds per kind, plus `idle`: the step's time not covered by any span."""
        out = {kind: 0.0 for kind in KINDS}
        for s in self.spans:
            out[s.kind] = out.get(s.kind, 0.0) + (s.end - s.start)
        out["idle"] = max(0.0, (self.end - self.start) - sum(out.values()))
        return out

    def to_json(self, rank: int) -> dict:
        return {
            "rank": rank,
            "start": self.start,
            "end": self.end,
            "spans": [[s.kind, s.micro_batch, s.start - self.start, s.end - self.start] for s in self.spans],
        }
