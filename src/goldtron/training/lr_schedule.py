"""Megatron's learning-rate schedule, counted in samples: linear warmup from 0, then constant,
linear or cosine decay to min-lr, held at min-lr after the decay window."""

from __future__ import annotations

import math


class LRSchedule:
    def __init__(self, max_lr: float, min_lr: float, warmup_samples: int, decay_samples: int, style: str):
        self.max_lr = max_lr
        self.min_lr = min_lr
        self.warmup_samples = warmup_samples
        self.decay_samples = decay_samples
        self.style = style
        self.num_samples = 0

    @classmethod
    def from_args(cls, args) -> "LRSchedule":
        return cls(args.lr, args.min_lr, args.lr_warmup_samples, args.lr_decay_samples, args.lr_decay_style)

    def lr(self) -> float:
        n = self.num_samples
        if self.warmup_samples > 0 and n <= self.warmup_samples:
            return self.max_lr * n / self.warmup_samples
        if self.style == "constant":
            return self.max_lr
        if n > self.decay_samples:
            return self.min_lr
        ratio = (n - self.warmup_samples) / max(1, self.decay_samples - self.warmup_samples)
        if self.style == "linear":
            coeff = 1.0 - ratio
        elif self.style == "cosine":
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        else:
            raise ValueError(f"unknown --lr-decay-style {self.style!r}")
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int) -> None:
        self.num_samples += increment

    # Same keys as Megatron's scheduler state, so --use-checkpoint-opt_param-scheduler can compare.
    def state_dict(self) -> dict:
        return {
            "max_lr": self.max_lr, "min_lr": self.min_lr, "lr_warmup_steps": self.warmup_samples,
            "lr_decay_steps": self.decay_samples, "lr_decay_style": self.style, "num_steps": self.num_samples,
        }

    def load_state_dict(self, state: dict, use_checkpoint_values: bool) -> None:
        """Megatron: with --use-checkpoint-opt_param-scheduler the checkpoint's schedule wins;
        otherwise the run's flags win. The position (num_steps) always comes from the checkpoint."""
        if use_checkpoint_values:
            self.max_lr = state["max_lr"]
            self.min_lr = state["min_lr"]
            self.warmup_samples = state["lr_warmup_steps"]
            self.decay_samples = state["lr_decay_steps"]
            self.style = state["lr_decay_style"]
        self.num_samples = state["num_steps"]
