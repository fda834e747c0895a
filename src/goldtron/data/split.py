"""`--split 949,50,1`: how documents are divided into train / validation / test.

Megatron's rule: weights are normalised; split i gets round(weight_i * N) documents counted
from the front, and any rounding surplus or shortfall is taken from the later splits so the
last split always ends at document N. Documents keep their order; shuffling happens later.
"""

from __future__ import annotations

import re

from goldtron.data.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(text: str) -> list[float]:
    """'949,50,1' -> normalised weights [0.949, 0.05, 0.001] (missing trailing weights are 0)."""
    pieces = [piece for piece in re.split(r"[,/]", str(text)) if piece.strip()]
    try:
        weights = [float(piece) for piece in pieces]
    except ValueError:
        weights = []
    if not 1 <= len(weights) <= 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise DataError(
            f"--split {text!r}: expected up to three non-negative weights for train,valid,test "
            f"with a positive sum, for example --split 949,50,1"
        )
    weights += [0.0] * (3 - len(weights))
    total = sum(weights)
    return [w / total for w in weights]


def split_document_ranges(num_documents: int, weights: list[float]) -> list[tuple[int, int]]:
    """[begin, end) document ranges for train, valid and test."""
    bounds = [0]
    for weight in weights:
        bounds.append(bounds[-1] + int(round(weight * float(num_documents))))
    surplus = bounds[-1] - num_documents
    bounds = [bounds[0]] + [bound - surplus for bound in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(len(weights))]
