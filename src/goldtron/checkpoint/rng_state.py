"""Every random stream a rank draws from, captured and restored exactly (exact resume needs them).

One value per rank, keyed by its (pp, tp, dp) coordinates (and cp under context parallelism), as Megatron keeps RNG per rank: the
default generators are seeded per pipeline stage and the tensor-parallel dropout stream per TP
rank. They only mean something to the same rank of the same layout, so a run with another
layout does not restore them (the caller says so in a log line).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from goldtron.parallel.random import DropoutRNG

# Keys of RNG values in a checkpoint. Defined here, not beside the model keys: a run that never
# checkpoints still builds a RankRandomState, and model_state imports torch.distributed.checkpoint.
RNG_PREFIX = "rng_state."


def rng_key(ps) -> str:
    """This rank's key; the CP coordinate only under context parallelism (older checkpoints have none)."""
    key = f"{RNG_PREFIX}pp{ps.pp_rank}.tp{ps.tp_rank}.dp{ps.dp_rank}"
    return key + f".cp{ps.cp_rank}" if ps.cp_size > 1 else key


def capture(dropout_rng: DropoutRNG) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "dropout": {k: v.clone() for k, v in dropout_rng.state_dict().items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict, dropout_rng: DropoutRNG) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    dropout_rng.load_state_dict(state["dropout"])


class RankRandomState:
    """This rank's random streams as one checkpoint part (state_dict / load_state_dict)."""

    def __init__(self, dropout_rng: DropoutRNG):
        self.dropout_rng = dropout_rng

    def state_dict(self) -> dict:
        return capture(self.dropout_rng)

    def load_state_dict(self, state: dict) -> None:
        restore(state, self.dropout_rng)  # looked up at call time: the flagship's RNG mutant replaces it
