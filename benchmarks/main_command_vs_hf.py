"""Time to verdict: the README's main command (the flagship case, both phases, judged) against
Hugging Face GPT-2 training the same number of iterations in one process on 2 threads.

Both run in this script, one after the other and then again in the other order (--rounds), on
the same machine; the ratio is main-command wall time / HF wall time (issue target: <= 0.7).
HF trains `--train-iters` (run 1) + the iterations run 2 repeats, i.e. the 60 iterations the
flagship's two phases train, on the flagship's shape: 4 layers, hidden 128, 4 heads, seq 256,
global batch 8 in micro-batches of 2, GPT-2 vocabulary, fp32.

    python benchmarks/main_command_vs_hf.py [--rounds 1] [--iterations 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_gpt2 import HFGPT2Runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "tests/functional_tests/test_cases/gpt/gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute"


def time_hf(iterations: int, threads: int) -> float:
    torch.set_num_threads(threads)
    runner = HFGPT2Runner(layers=4, hidden=128, heads=4, seq=256)
    batches = runner.random_batches(micro_batches=4, micro_batch_size=2)
    started = time.perf_counter()
    for _ in range(iterations):
        runner.step(batches)
    return time.perf_counter() - started


def time_main_command() -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "goldtron", "test", str(FLAGSHIP), "--output-dir", out],
                                capture_output=True, text=True)
        return time.perf_counter() - started, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="each round times both, in alternating order")
    parser.add_argument("--iterations", type=int, default=60, help="HF iterations (the flagship's two phases: 40 + 20)")
    parser.add_argument("--threads", type=int, default=2)
    o = parser.parse_args()
    ratios = []
    for index in range(o.rounds):
        order = ("hf", "main") if index % 2 == 0 else ("main", "hf")
        times = {}
        for which in order:
            if which == "hf":
                times["hf"] = time_hf(o.iterations, o.threads)
            else:
                times["main"], code = time_main_command()
                if code != 0:
                    print(f"main command exited {code}: not a verdict to time")
                    return 1
        ratios.append(times["main"] / times["hf"])
        print(f"round {index + 1}: main command {times['main']:.1f} s, HF GPT-2 {o.iterations} iterations "
              f"{times['hf']:.1f} s ({times['hf'] / o.iterations:.3f} s/it), ratio {ratios[-1]:.3f} (target <= 0.7)")
    print(f"ratio main command / HF: {sorted(ratios)[len(ratios) // 2]:.3f} (median of {len(ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
