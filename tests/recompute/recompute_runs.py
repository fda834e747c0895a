"""Shared flags of the recompute tests: the recomputation settings to compare, and dropout on."""

from __future__ import annotations

# Dropout on (hidden and attention) so that a recompute with other masks than the first forward
# changes the gradients: this is what makes the equality tests able to fail.
DROPOUT_ON = ["--hidden-dropout", "0.1", "--attention-dropout", "0.1"]


def full(method: str, num_layers: int) -> list[str]:
    return ["--recompute-granularity", "full", "--recompute-method", method, "--recompute-num-layers", str(num_layers)]


SELECTIVE = ["--recompute-granularity", "selective"]
