"""Shared helpers of the gate's tests: the reference folder and small golden builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from goldtron.gate.golden import MetricSeries

REFERENCE = Path("/work/shared/reference/megatron")
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"Megatron reference cases not present at {REFERENCE}")
    return REFERENCE


def series(values: dict[int, float | str], interval: int = 1) -> MetricSeries:
    steps = sorted(values)
    return MetricSeries(steps[0], steps[-1], interval, dict(sorted(values.items())))


def write_case(directory: Path, test_type: str = "regular", train_iters: int = 10, extra_args: dict | None = None,
               goldtron: dict | None = None, top: dict | None = None) -> Path:
    """A case that drives the fake trainer with 2 ranks (tiny: a phase is mostly torchrun start-up)."""
    import yaml

    model_args = {
        "--num-layers": 2, "--train-iters": train_iters, "--tensorboard-dir": "${TENSORBOARD_PATH}",
        "--save": "${CHECKPOINT_SAVE_PATH}", "--load": "${CHECKPOINT_LOAD_PATH}",
        "--save-interval": train_iters // 2, "--data-path": "${DATA_PATH}/corpus", "--seed": 1234,
        "--lr": 0.001, "--bf16": True, "--log-num-zeros-in-grad": True,
    }
    model_args.update(extra_args or {})
    config = {"ENV_VARS": {"OMP_NUM_THREADS": 1}, "MODEL_ARGS": model_args, "TEST_TYPE": test_type,
              "GOLDTRON": {"TRAINER": ["python", str(FAKE_TRAINER)], "NPROC_PER_NODE": 2, "PHASE_TIMEOUT_S": 120,
                           **(goldtron or {})}}
    config.update(top or {})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: launches torchrun jobs (seconds each)")
