"""Dropout random streams, as Megatron arranges them.

- `regular`: seeded seed + 100 * pp_rank, the same on every TP rank of a stage, used for
  dropout on activations that are replicated across TP (embedding, residual/hidden dropout),
  so those copies stay identical.
- `tensor_parallel`: seeded seed + 2718 + tp_rank, used inside TP regions (attention
  dropout on this rank's heads), so each rank drops different elements of its own shard.
  Under --sequence-parallel the residual and embedding dropouts act on this rank's sequence
  part, so they draw from it too (Megatron runs the whole transformer block, and the embedding
  dropout, under the tensor-parallel RNG tracker then): `hidden_dropout_generator`.

Explicit generators (instead of forking torch's global state) make the streams easy to save
and restore exactly in checkpoints.
"""

from __future__ import annotations

import torch


class DropoutRNG:
    def __init__(self, seed: int, pp_rank: int, tp_rank: int, device: torch.device):
        self.regular = torch.Generator(device=device)
        self.regular.manual_seed(seed + 100 * pp_rank)
        self.tensor_parallel = torch.Generator(device=device)
        self.tensor_parallel.manual_seed(seed + 2718 + tp_rank)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"regular": self.regular.get_state(), "tensor_parallel": self.tensor_parallel.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.regular.set_state(state["regular"])
        self.tensor_parallel.set_state(state["tensor_parallel"])


def hidden_dropout_generator(rng: DropoutRNG, sequence_parallel: bool) -> torch.Generator:
    """The stream of the dropouts outside the TP GEMMs (embedding, residual): shared by the TP
    ranks on replicated activations, each rank's own on its sequence part."""
    return rng.tensor_parallel if sequence_parallel else rng.regular


def dropout(x: torch.Tensor, p: float, generator: torch.Generator, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * keep * (1.0 / (1.0 - p))
