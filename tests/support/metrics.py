"""Comparing the per-step metrics of two training runs (layout-equality tests)."""

from __future__ import annotations

# A layout sums the same products in another order (sharded GEMMs, all-reduces, DP averaging):
# fp32 rounding differs at ~1e-7 per step and compounds through the Adam updates. A real bug (a
# wrong shard, a missed reduction, a wrong scale) shows at 1e-2 or more from the first step.
RTOL = 1e-5
# Exactly-zero gradient elements: a count, but a layout may round a tiny gradient to zero
# differently; no more than a handful in a model of ~100K parameters.
NUM_ZEROS_SLACK = 5


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def assert_same_training(steps: list[dict], reference: list[dict], label: str,
                         num_zeros_slack: int = NUM_ZEROS_SLACK) -> None:
    """lm loss, grad-norm and params-norm within RTOL of the reference's, step by step; num-zeros
    within a handful (or the `num_zeros_slack` a caller explains)."""
    assert [s["iteration"] for s in steps] == [s["iteration"] for s in reference], label
    for ours, ref in zip(steps, reference):
        for key in ("lm_loss", "grad_norm", "num_zeros", "params_norm"):
            if key == "num_zeros":
                assert abs(ours[key] - ref[key]) <= num_zeros_slack, (label, ours["iteration"], key, ours[key], ref[key])
                continue
            assert relative(ours[key], ref[key]) <= RTOL, (label, ours["iteration"], key, ours[key], ref[key])
