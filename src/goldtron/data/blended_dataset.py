"""Weighted blending of several datasets: `--data-path 0.3 A 0.7 B`.

Megatron's rule: each dataset is asked for ceil(ceil(weight * N) * 1.005) samples (a small
surplus so the greedy interleave never runs a dataset dry), and sample i of the blend comes
from the dataset furthest behind its share: argmax_d(weight_d * max(i, 1) - taken_d), the
first dataset winning ties. The result is deterministic and needs no random numbers.
"""

from __future__ import annotations

import math

import numpy as np

BLEND_SURPLUS = 0.005


def samples_per_dataset(weights: list[float], num_samples: int) -> list[int]:
    return [int(math.ceil(math.ceil(num_samples * weight) * (1 + BLEND_SURPLUS))) for weight in weights]


def build_blending_indices(weights: list[float], size: int) -> dict[str, np.ndarray]:
    """Which dataset, and which of its samples, each blended sample comes from."""
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    taken = [0] * len(weights)
    for i in range(size):
        scale = max(float(i), 1.0)
        errors = [weight * scale - count for weight, count in zip(weights, taken)]
        chosen = errors.index(max(errors))
        dataset_index[i] = chosen
        dataset_sample_index[i] = taken[chosen]
        taken[chosen] += 1
    return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}


class BlendedDataset:
    def __init__(self, datasets: list, indices: dict[str, np.ndarray], name: str):
        self.datasets = datasets
        self.dataset_index = indices["dataset_index"]
        self.dataset_sample_index = indices["dataset_sample_index"]
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.datasets[int(self.dataset_index[index])][int(self.dataset_sample_index[index])]
