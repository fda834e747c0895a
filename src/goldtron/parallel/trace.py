"""Per-rank record of what the pipeline schedule did and when: forward, backward, the deferred
weight-gradient drain, and time spent waiting on p2p transfers. Feeds the timers written to
TensorBoard and the pipeline timeline picture.

This module owns the trace file format: `<tensorboard dir>/pipeline_trace/rank{r}.jsonl`, one
JSON line per step (`append_step` writes it, `read_steps` reads it, `goldtron timeline` draws it).
Each span is [kind, micro-batch, start, end, model chunk] (the chunk: which of the rank's model
chunks ran, 0 without an interleaved pipeline; files written before it existed have 4 fields).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("forward", "backward", "wgrad-drain", "p2p-wait", "grad-reduce", "optimizer")
TRACE_FOLDER = "pipeline_trace"


@dataclass
class Span:
    kind: str
    micro_batch: int  # -1 when the span is not about one micro-batch
    start: float
    end: float
    chunk: int = 0  # the model chunk (interleaved pipeline); 0 otherwise


@dataclass
class StepTrace:
    start: float = 0.0
    end: float = 0.0
    spans: list[Span] = field(default_factory=list)

    @contextmanager
    def span(self, kind: str, micro_batch: int = -1, chunk: int = 0):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spans.append(Span(kind, micro_batch, t0, time.perf_counter(), chunk))

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
            "spans": [[s.kind, s.micro_batch, s.start - self.start, s.end - self.start, s.chunk] for s in self.spans],
        }


def append_step(tensorboard_dir: str, trace: StepTrace, iteration: int, ps) -> None:
    """This rank's spans of step `iteration` as one line of its trace file (one file per rank)."""
    folder = os.path.join(tensorboard_dir, TRACE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    record = dict(trace.to_json(ps.rank), iteration=iteration, pp_rank=ps.pp_rank, tp_rank=ps.tp_rank,
                  dp_rank=ps.dp_rank)
    with open(os.path.join(folder, f"rank{ps.rank}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def trace_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("rank*.jsonl"))


def read_steps(folder: Path) -> dict[int, dict[int, dict]]:
    """{rank: {iteration: record}} from every trace file in `folder` (a pipeline_trace folder)."""
    by_rank: dict[int, dict[int, dict]] = {}
    for file in trace_files(folder):
        for line in file.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_rank.setdefault(record["rank"], {})[record["iteration"]] = record
    return by_rank
