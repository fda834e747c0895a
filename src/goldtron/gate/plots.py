"""One PNG per case: golden vs actual curve per metric, with the relative difference under it."""

from __future__ import annotations

import math
from pathlib import Path

from goldtron.gate.golden import Golden


def plot_case(path: Path, title: str, reference: Golden | None, actual: Golden | None, metrics: list[str],
              reference_label: str = "golden") -> Path | None:
    """Draw the metrics both sides have; returns None when there is nothing to draw."""
    reference, actual = reference or {}, actual or {}
    drawn = [metric for metric in metrics if metric in actual or metric in reference]
    if not drawn:
        return None
    # Agg canvas without pyplot: files only, no display, and a second less to import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(drawn), 6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(drawn), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    for column, metric in enumerate(drawn):
        top, bottom = axes[0][column], axes[1][column]
        for label, golden, style in ((reference_label, reference, "-"), ("actual", actual, "--")):
            if metric in golden:
                steps = sorted(golden[metric].values)
                values = [golden[metric].numeric(step) for step in steps]
                top.plot(steps, [v if math.isfinite(v) else math.nan for v in values], style, label=label)
        top.set_title(metric)
        top.legend()
        if metric in reference and metric in actual:
            steps = sorted(reference[metric].values)
            differences = []
            for step in steps:
                ref, act = reference[metric].numeric(step), actual[metric].numeric(step)
                finite = math.isfinite(ref) and math.isfinite(act) and ref != 0
                differences.append((act - ref) / abs(ref) if finite else math.nan)
            bottom.plot(steps, differences, color="tab:red")
            bottom.axhline(0.0, color="grey", linewidth=0.5)
        bottom.set_ylabel("relative diff")
        bottom.set_xlabel("step")
    figure.suptitle(title)
    figure.set_layout_engine("tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    return path
