"""Which checkpointer a run gets, and the parts a checkpoint holds.

Apart from training/checkpointing.py on purpose: that module imports torch.distributed.checkpoint,
~0.8 s of a process's start (it pulls in DTensor and sympy), and a run without --save or --load
never needs it. Only `build_checkpointer` with one of them imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from goldtron.checkpoint.rng_state import RankRandomState
    from goldtron.training.lr_schedule import LRSchedule
    from goldtron.training.optimizer import Optimizer
    from goldtron.training.progress import TrainingProgress


@dataclass
class CheckpointParts:
    model: torch.nn.Module
    optimizer: Optimizer
    lr_schedule: LRSchedule
    progress: TrainingProgress
    rng: RankRandomState


def build_checkpointer(args, ps, parts: CheckpointParts):
    if not args.save and not args.load:
        return NullCheckpointer()
    from goldtron.training.checkpointing import Checkpointer

    return Checkpointer(args, ps, parts)


class NullCheckpointer:
    """No --save and no --load: every call does nothing (the loop calls them all the same)."""

    def load(self) -> None: ...
    def after_step(self) -> None: ...
    def before_optimizer_step(self) -> None: ...
    def at_end(self) -> None: ...
    def close(self) -> None: ...
