"""Placeholder until torch_dist checkpoints land: no checkpointer unless --save/--load is given."""

from __future__ import annotations


def build_checkpointer(args, ps, trainer, rng):
    if args.save or args.load:
        raise NotImplementedError("--save/--load: torch_dist checkpoints are not implemented yet")
    return None
