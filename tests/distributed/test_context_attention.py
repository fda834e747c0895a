"""Issue 17, "what must be shown" 2: context-parallel attention (p2p ring, a2a, allgather, a2a+p2p)
against one process's attention over the same full sequence, outputs and gradients chunk by chunk
within 1e-6, on each rank of a 4-process gloo job; the script says why that tolerance."""

from pathlib import Path

from support.torchrun import run_script

SCRIPT = Path(__file__).parent / "scripts" / "check_context_attention.py"


def test_context_parallel_attention_matches_full_sequence_attention():
    result = run_script(4, SCRIPT, timeout=180)
    assert result.stdout.count("context-parallel attention matches") == 4
