"""The live progress line: parsed from Megatron's stdout line, with an ETA from the pace."""

from __future__ import annotations

import io

from rich.console import Console

from goldtron.gate.progress import PhaseProgress, parse_progress

LINE = (" [2026-11-29 10:00:00] iteration        3/      20 | consumed samples:           24 | elapsed time per "
        "iteration (ms): 512.3 | learning rate: 1.500000E-04 | global batch size:     8 | lm loss: 1.082343E+01 |")


def test_parses_megatron_iteration_line_even_with_torchrun_prefix():
    parsed = parse_progress("[default3]:" + LINE)
    assert (parsed.iteration, parsed.total, parsed.loss) == (3, 20, "1.082343E+01")
    assert parse_progress("building GPT model ...") is None


def test_plain_output_prints_phase_and_deciles_with_eta(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 11.0, 11.0, 11.0, 12.0])
    monkeypatch.setattr("goldtron.gate.progress.time.monotonic", lambda: next(clock))
    buffer = io.StringIO()
    progress = PhaseProgress(Console(file=buffer, width=200), live=False)
    progress.start("case run1")
    progress.update(LINE.replace("3/      20", "2/      20"))   # first step seen at t=1
    progress.update(LINE.replace("3/      20", "12/      20"))  # 10 steps in 10 s: 8 left -> 8 s
    progress.finish("done")
    text = buffer.getvalue()
    assert "[case run1] started" in text and "iteration 12/20" in text
    assert "ETA 0:08" in text and "lm loss 1.082343E+01" in text and "[case run1] done" in text
