"""Issue 2, tests 1-2: every tensor-parallel layer and the vocab-parallel cross-entropy equal their
single-process twins (forward and gradients) at TP 1, 2 and 4. The comparison runs on each rank
of a 4-process gloo job; see the script for the tolerance and its reason."""

from pathlib import Path

from support.torchrun import run_script

SCRIPT = Path(__file__).parent / "scripts" / "check_parallel_layers.py"


def test_parallel_layers_match_single_process_twins():
    result = run_script(4, SCRIPT, ["--tp", "1", "2", "4"], timeout=180)
    assert result.stdout.count("all parallel layers match") == 4
