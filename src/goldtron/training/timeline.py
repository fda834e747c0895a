"""`goldtron timeline`: draw one training step of a real run as a pipeline timeline (PNG).

Ranks are rows (pipeline stage 0 on top, as in the 1F1B figures of the Megatron papers), time
runs left to right, and each forward, backward, deferred weight-gradient drain, gradient
reduction and optimizer step is a coloured box; forward and backward boxes carry their
micro-batch number (with an interleaved pipeline "micro-batch.chunk", and the boxes of
odd chunks hatched, so the model chunks each rank cycles through stand out), the drain ("W",
last stage only: only it defers) its duration. Blank space is idle time (waiting on p2p is drawn as a thin grey bar).

Input is the `pipeline_trace` folder that `goldtron train --log-timers-to-tensorboard
--tensorboard-dir DIR` writes (one `rank{r}.jsonl` per rank, one line per step). Times are
`time.perf_counter` (CLOCK_MONOTONIC), the same clock for every process of one host, so the rows
line up; across hosts each row is shifted to start with its own step.

Several runs can be given (for instance without and with --defer-embedding-wgrad-compute): one
panel each, on the same time scale, so the drain and the shorter last-stage backwards stand out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from goldtron.parallel.trace import TRACE_FOLDER, read_steps, trace_files

EXIT_BAD_INPUT = 2

# kind: (colour, label in the legend); the drain gets the loudest colour on purpose.
STYLE = {
    "forward": ("#6baed6", "forward (micro-batch)"),
    "backward": ("#74c476", "backward (micro-batch)"),
    "wgrad-drain": ("#e6550d", "deferred wgrad drain"),
    "grad-reduce": ("#9e9ac8", "gradient reduction + clip"),
    "optimizer": ("#8c6d31", "optimizer"),
    "p2p-wait": ("#bdbdbd", "p2p wait"),
}
# A box narrower than this fraction of the step is widened to it, so that a short drain on a
# fast machine is still visible; the legend says so.
MIN_BOX_FRACTION = 0.004


class TimelineError(Exception):
    """Bad input to `goldtron timeline`; the message names the argument and the fix."""


@dataclass
class Box:
    rank: int
    kind: str
    micro_batch: int
    start: float  # seconds from the earliest rank's step start
    end: float
    chunk: int = 0  # the rank's model chunk (interleaved pipeline)


@dataclass
class RankStep:
    rank: int
    pp_rank: int
    tp_rank: int
    dp_rank: int
    start: float
    spans: list


def trace_folder(path: Path) -> Path:
    """Accept the run's TensorBoard folder or its pipeline_trace folder."""
    for candidate in (path, path / TRACE_FOLDER):
        if candidate.is_dir() and trace_files(candidate):
            return candidate
    raise TimelineError(
        f"no pipeline trace under {path}: expected {path}/pipeline_trace/rank*.jsonl. Train with "
        "--log-timers-to-tensorboard --tensorboard-dir DIR and pass DIR (or DIR/pipeline_trace).")


def read_step(folder: Path, iteration: int | None) -> tuple[int, list[RankStep]]:
    """Every rank's record of `iteration` (default: the last step all ranks recorded)."""
    by_rank = read_steps(folder)
    common = set.intersection(*(set(steps) for steps in by_rank.values()))
    if not common:
        raise TimelineError(f"the ranks under {folder} have no step in common; was the run cut short?")
    chosen = max(common) if iteration is None else iteration
    if chosen not in common:
        raise TimelineError(f"--iteration {iteration} is not in {folder}; recorded steps: "
                            f"{min(common)}..{max(common)}. Pick one of those.")
    steps = []
    for rank, records in by_rank.items():
        r = records[chosen]
        steps.append(RankStep(rank, r.get("pp_rank", 0), r.get("tp_rank", 0), r.get("dp_rank", 0), r["start"],
                              r["spans"]))
    steps.sort(key=lambda s: (s.pp_rank, s.dp_rank, s.tp_rank))
    return chosen, steps


def boxes_of(steps: list[RankStep]) -> list[Box]:
    """Spans on one time axis: zero is the first rank's step start."""
    origin = min(s.start for s in steps)
    out = []
    for s in steps:
        shift = s.start - origin
        for kind, mb, t0, t1, *chunk in s.spans:  # traces written before chunks existed have no chunk
            out.append(Box(s.rank, kind, mb, shift + t0, shift + t1, chunk[0] if chunk else 0))
    return out


def box_label(box: Box, interleaved: bool) -> str:
    """A forward/backward box's text: its micro-batch, and with several chunks per rank its chunk."""
    return f"{box.micro_batch}.{box.chunk}" if interleaved else str(box.micro_batch)


def _draw_panel(axes, title: str, steps: list[RankStep], boxes: list[Box], x_max: float) -> None:
    row_of = {s.rank: row for row, s in enumerate(steps)}
    last_stage = max(s.pp_rank for s in steps)
    on_last_stage = {s.rank for s in steps if s.pp_rank == last_stage}
    min_width = MIN_BOX_FRACTION * x_max
    interleaved = any(box.chunk > 0 for box in boxes)
    for box in boxes:
        if box.kind == "wgrad-drain" and box.rank not in on_last_stage:
            continue  # only the last stage defers; elsewhere the drain span is empty bookkeeping
        colour, _ = STYLE.get(box.kind, ("#000000", box.kind))
        row = row_of[box.rank]
        width = max(box.end - box.start, min_width)
        thin = box.kind == "p2p-wait"
        height, bottom = (0.16, row - 0.08) if thin else (0.7, row - 0.35)
        axes.broken_barh([(box.start * 1e3, width * 1e3)], (bottom, height), facecolors=colour,
                         edgecolor="none" if thin else "black", linewidth=0.4, hatch="//" if box.chunk % 2 else None)
        if box.micro_batch >= 0 and box.kind in ("forward", "backward"):
            axes.text((box.start + width / 2) * 1e3, row, box_label(box, interleaved), ha="center", va="center",
                      fontsize=7, clip_on=True)
        elif box.kind == "wgrad-drain":
            # The true duration: a drain with nothing kept (no deferral) reads 0.00 ms.
            axes.text((box.start + width / 2) * 1e3, row + 0.42, f"W {(box.end - box.start) * 1e3:.2f} ms",
                      ha="center", va="top", fontsize=7, color=colour, fontweight="bold", clip_on=True)
    axes.set_yticks(range(len(steps)))
    axes.set_yticklabels([f"rank {s.rank}  (pp {s.pp_rank}, tp {s.tp_rank}, dp {s.dp_rank})" for s in steps],
                         fontsize=8)
    axes.set_ylim(len(steps) - 0.4, -0.6)  # stage 0 on top
    axes.set_xlim(0, x_max * 1e3)
    axes.set_title(title, fontsize=9, loc="left")
    axes.grid(axis="x", linewidth=0.3)


def draw(runs: list[tuple[str, list[RankStep]]], output: Path) -> dict[str, list[Box]]:
    """One panel per run, one time scale for all; returns the boxes drawn per run label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: files only, no display
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    drawn = {label: boxes_of(steps) for label, steps in runs}
    x_max = max((b.end for boxes in drawn.values() for b in boxes), default=1e-3)
    rows = sum(len(steps) for _, steps in runs)
    figure = Figure(figsize=(12, 1.2 + 0.45 * rows + 0.6 * len(runs)))
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(runs), 1, squeeze=False, sharex=True)[:, 0]
    for axes, (label, steps) in zip(axes_list, runs):
        _draw_panel(axes, label, steps, drawn[label], x_max)
    axes_list[-1].set_xlabel("milliseconds from the step's start")
    handles = [Patch(facecolor=c, edgecolor="black", label=name) for c, name in STYLE.values()]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7, frameon=False,
                  title=f"blank = idle; boxes shorter than {MIN_BOX_FRACTION:.1%} of the step are widened to it; "
                        "interleaved pipeline: labels are micro-batch.chunk, odd chunks hatched",
                  title_fontsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return drawn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goldtron timeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="a run's --tensorboard-dir (or its pipeline_trace folder); several: one panel each")
    parser.add_argument("--iteration", type=int, default=None, help="the step to draw (default: the last one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="PNG to write (default: timeline_iter<N>.png in the first run's trace folder)")
    parser.add_argument("--labels", nargs="+", default=None, help="panel titles, one per run (default: folder names)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.labels is not None and len(args.labels) != len(args.runs):
            raise TimelineError(f"--labels has {len(args.labels)} names for {len(args.runs)} runs; give one per run.")
        runs, iteration = [], None
        for index, path in enumerate(args.runs):
            folder = trace_folder(path)
            iteration, steps = read_step(folder, args.iteration)
            name = args.labels[index] if args.labels else str(path)
            runs.append((f"{name} - iteration {iteration}", steps))
        output = args.output or trace_folder(args.runs[0]) / f"timeline_iter{iteration}.png"
        draw(runs, output)
    except TimelineError as error:
        print(f"goldtron timeline: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"goldtron timeline: wrote {output}")
    return 0
