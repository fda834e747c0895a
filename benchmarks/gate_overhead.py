"""Gate overhead: wall time of `goldtron test` on a case vs the sum of its training phases.

Everything that is not training (start-up, imports, reading TensorBoard, judging, reports,
the PNG, checkpoint surgery between phases) is overhead. Target: ratio <= 1.10.
The "training" is the gate's fake trainer (tests/gate/fake_trainer.py) busy for
--step-seconds per iteration under torchrun, so the phases cost what real phases cost to
launch. Both times come from the same run, so machine noise affects them alike.

    python benchmarks/gate_overhead.py [--iters 40] [--step-seconds 0.25] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FAKE_TRAINER = Path(__file__).resolve().parents[1] / "tests" / "gate" / "fake_trainer.py"


def write_case(directory: Path, iters: int, step_seconds: float, nproc: int) -> Path:
    config = {
        "ENV_VARS": {"OMP_NUM_THREADS": 1},
        "MODEL_ARGS": {"--train-iters": iters, "--save-interval": iters // 2, "--tensorboard-dir": "${TENSORBOARD_PATH}",
                       "--save": "${CHECKPOINT_SAVE_PATH}", "--load": "${CHECKPOINT_LOAD_PATH}",
                       "--fake-step-seconds": step_seconds},
        "TEST_TYPE": "ckpt-resume",
        "GOLDTRON": {"TRAINER": ["python", str(FAKE_TRAINER)], "NPROC_PER_NODE": nproc},
    }
    directory.mkdir(parents=True)
    (directory / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def gate(case: Path, out: Path, *extra: str) -> tuple[int, float, dict]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "goldtron", "test", str(case), "--output-dir", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return result.returncode, wall, json.loads((out / "timings.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--step-seconds", type=float, default=0.25)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        case = write_case(root / "overhead_case", args.iters, args.step_seconds, args.nproc)
        code, _, _ = gate(case, root / "record", "--record")  # the golden; not timed
        if code != 0:
            print(f"recording the golden failed (exit {code})", file=sys.stderr)
            return 1
        code, wall, timings = gate(case, root / "judge")
        if code != 0:
            print(f"the gate failed its own case (exit {code})", file=sys.stderr)
            return 1
    training = timings["training_wall_s"]
    print(f"case: ckpt-resume, {args.iters} iterations x {args.step_seconds} s, {args.nproc} ranks")
    print(f"{'training phases (sum)':>28}: {training:8.2f} s")
    print(f"{'goldtron test (total)':>28}: {wall:8.2f} s")
    print(f"{'overhead':>28}: {wall - training:8.2f} s")
    print(f"{'ratio total / training':>28}: {wall / training:8.3f}  (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
