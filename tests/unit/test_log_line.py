"""The stdout line shows the loss TensorBoard records: fp32 (the loss is reduced in fp64)."""

import numpy as np

from goldtron.gate.progress import parse_progress
from goldtron.training.logging import as_float32, megatron_log_line

# Just below the half-way point between 6.942388 and 6.942389, so fp64 prints ...388; its nearest
# fp32 (6.94238853...) is above it and prints ...389. Such a loss made the line and the recorded
# value differ on the Intel AVX512 kind (tests/gate/test_trainer_contract.py, step 1).
LOSS = 6.94238849


def values(loss: float) -> dict:
    return {"consumed_samples": 8, "iteration_time": 0.5, "learning_rate": 1e-4, "batch_size": 8,
            "lm_loss": loss, "grad_norm": 1.0}


def recorded(value: float) -> float:
    """fp32 rounding by numpy, independent of the code under test."""
    return float(np.float32(value))


def test_the_line_prints_the_fp32_loss_tensorboard_records():
    assert f"{LOSS:.6E}" != f"{recorded(LOSS):.6E}"  # the case this test is about
    parsed = parse_progress(megatron_log_line(1, 3, values(LOSS)))
    assert parsed.loss == f"{recorded(LOSS):.6E}" == "6.942389E+00"


def test_fp32_rounding_keeps_infinities_and_nan():
    assert as_float32(1e39) == float("inf") and as_float32(-1e39) == float("-inf")
    assert as_float32(float("nan")) != as_float32(float("nan"))
    assert as_float32(0.1) == recorded(0.1) != 0.1
