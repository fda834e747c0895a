"""The --swiglu MLP (with and without biases), the bias-free GeLU MLP, the bias-free rope
attention and the grouped-query attention with --qk-layernorm (LayerNorm, RMSNorm) at TP 2 and 4 equal their single-process twins (forward, input- and weight-gradients),
on each rank of a 4-process gloo job; see the script for the tolerance and its reason."""

from pathlib import Path

from support.torchrun import run_script

SCRIPT = Path(__file__).parent / "scripts" / "check_architecture_layers.py"


def test_architecture_layers_match_single_process_twins():
    result = run_script(4, SCRIPT, ["--tp", "2", "4"], timeout=180)
    assert result.stdout.count("all architecture layers match") == 4
