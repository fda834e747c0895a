"""Where a run is: the steps done and the samples consumed (the data position follows from them).

A checkpoint part (state_dict / load_state_dict): the checkpointer saves and restores it, the
loop advances it, and neither needs the other's shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingProgress:
    iteration: int = 0
    consumed_samples: int = 0

    def advance(self, global_batch_size: int) -> None:
        self.iteration += 1
        self.consumed_samples += global_batch_size

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.consumed_samples = state["consumed_samples"]
