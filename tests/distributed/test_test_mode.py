"""--test-mode: Megatron's real-time test of the query/key layer norms (training/qk_norm_check.py).

With --qk-layernorm it gathers the q/k norm weights over DP and TP every step: training is bitwise
the run without it (the check only reads), under TP2xDP2 (both groups) and TP2xPP2 (stages whose
layers differ, with no hang); a rank whose q-norm weight is corrupted after iteration 2 stops
every rank at iteration 3 naming the parameter and the ranks.
"""

import os
import subprocess
import sys
from pathlib import Path

from support.torchrun import EVERY_RANK_MONITOR_INTERVAL_S, NO_DROPOUT, TINY_MODEL, free_port, layout_flags

ITERS = ["--train-iters", "4"]
QK = ["--qk-layernorm"]
MUTANT_TRAINER = Path(__file__).parents[1] / "support" / "mutant_trainer.py"


LAYOUTS = {"TP2xDP2": layout_flags(2, 1), "TP2xPP2": layout_flags(2, 2)}
SHARED_RUNS = {  # in the session's shared 4-rank launches (support/shared_runs.py)
    f"{name}{suffix}": (4, TINY_MODEL + NO_DROPOUT + ITERS + QK + layout + extra)
    for name, layout in LAYOUTS.items() for suffix, extra in ((" plain", []), (" test mode", ["--test-mode"]))}


def test_test_mode_checks_without_changing_training(shared_runs):
    records = shared_runs.read(__name__, SHARED_RUNS)
    for name in LAYOUTS:
        plain, checked = records[f"{name} plain"], records[f"{name} test mode"]
        assert [r["iteration"] for r in checked] == [1, 2, 3, 4]
        for ours, ref in zip(checked, plain):
            for key in ("lm_loss", "grad_norm", "params_norm"):
                assert ours[key] == ref[key], (name, ours["iteration"], key)


def test_a_corrupted_qk_norm_stops_every_rank_naming_it(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--monitor-interval", str(EVERY_RANK_MONITOR_INTERVAL_S),
           str(MUTANT_TRAINER), "corrupt-qk-norm-on-tp-rank-1", "train",
           *TINY_MODEL, *NO_DROPOUT, *ITERS, *QK, *layout_flags(2, 1), "--test-mode"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for rank in (0, 1):
        assert f"--test-mode: at iteration 3 the replicated query/key layer norms do not agree on rank {rank}" \
            in output, output[-3000:]
    assert "q_layernorm.weight differs between tensor-parallel ranks" in output, output[-3000:]
    assert "iteration        2/       4" in result.stdout  # trained up to the corruption ...
    assert "iteration        3/       4" not in result.stdout  # ... and stopped before logging step 3
