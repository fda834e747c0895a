"""Activation recomputation, as Megatron's --recompute-granularity / -method / -num-layers do it.

- full + uniform N: the stage's layers run in chunks of N; only each chunk's input is kept, and
  the chunk's forward runs again in backward.
- full + block N: the first N layers of the stage are recomputed, one checkpoint each; the rest
  keep their activations.
- selective: only the core attention (softmax(QK^T/sqrt(d)) V with its dropout) is recomputed;
  its [b, heads, s, s] tensors are the largest activations and the cheapest to redo.

Recomputation must not change training: the recomputed forward has to draw the same dropout
masks as the first one. torch.utils.checkpoint's preserve_rng_state covers only torch's global
CPU/CUDA generators, and goldtron's dropout uses its own generators (DropoutRNG), which later
micro-batches keep advancing before this one's backward runs (1F1B). So their states are taken
before the first forward and put back for the recompute, and the states the generators had
reached are restored right after it.

Non-reentrant checkpointing (use_reentrant=False) because it works through saved-tensor hooks:
it needs no input that requires grad, passes gradients to every parameter used inside (a
reentrant checkpoint drops them for inputs that do not require grad), composes with nested
autograd Functions such as the TP collectives, and takes the recompute context used here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from goldtron.parallel.random import DropoutRNG


class _RecomputeWithSavedRNG:
    """Entered around the recompute: the dropout generators replay the first forward's draws."""

    def __init__(self, rng: DropoutRNG, states_at_first_forward: dict[str, torch.Tensor]):
        self.rng = rng
        self.first_forward_states = states_at_first_forward
        self.states_before_recompute: dict[str, torch.Tensor] | None = None

    def __enter__(self):
        self.states_before_recompute = self.rng.state_dict()
        self.rng.load_state_dict(self.first_forward_states)

    def __exit__(self, *exc):
        # Later forwards must continue from where the streams were, as without recomputation.
        self.rng.load_state_dict(self.states_before_recompute)
        return False


def checkpoint_with_rng(function: Callable, rng: DropoutRNG, *inputs: torch.Tensor):
    """function(*inputs), keeping none of its activations: they are recomputed in backward with
    the same dropout masks (goldtron's generators and torch's global ones)."""
    saved = rng.state_dict()
    return checkpoint(function, *inputs, use_reentrant=False, preserve_rng_state=True,
                      context_fn=lambda: (contextlib.nullcontext(), _RecomputeWithSavedRNG(rng, saved)))


def recompute_is_active(training: bool) -> bool:
    """Only a training forward that builds a graph has activations to save (Megatron: training)."""
    return training and torch.is_grad_enabled()


@dataclass(frozen=True)
class LayerChunk:
    """Consecutive layers [start, stop) of a stage, run under one checkpoint when `recompute`."""

    start: int
    stop: int
    recompute: bool


def layer_chunks(num_layers: int, granularity: str | None, method: str | None, recompute_num_layers: int | None
                 ) -> list[LayerChunk]:
    """How a stage of `num_layers` layers is run (validation has checked the flags)."""
    if granularity != "full":
        return [LayerChunk(i, i + 1, False) for i in range(num_layers)]
    if method == "uniform":
        return [LayerChunk(i, i + recompute_num_layers, True) for i in range(0, num_layers, recompute_num_layers)]
    if method == "block":
        return [LayerChunk(i, i + 1, i < recompute_num_layers) for i in range(num_layers)]
    raise ValueError(f"full recomputation needs method uniform or block, not {method!r}")


def run_layer_chunks(layers: Sequence[torch.nn.Module], x: torch.Tensor, chunks: Sequence[LayerChunk],
                     rng: DropoutRNG) -> torch.Tensor:
    """The layers in order, each chunk marked `recompute` under one checkpoint."""
    for chunk in chunks:
        members = layers[chunk.start:chunk.stop]

        def run_chunk(h: torch.Tensor, members=members) -> torch.Tensor:
            for layer in members:
                h = layer(h)
            return h

        if chunk.recompute and recompute_is_active(members[0].training):
            x = checkpoint_with_rng(run_chunk, rng, x)
        else:
            x = run_chunk(x)
    return x


class CoreAttentionRunner:
    """Runs SelfAttention's core attention, checkpointed under --recompute-granularity selective."""

    def __init__(self, selective: bool, rng: DropoutRNG):
        self.selective = selective
        self.rng = rng

    def __call__(self, core_attention: Callable, q, k, v, training: bool) -> torch.Tensor:
        if self.selective and recompute_is_active(training):
            return checkpoint_with_rng(core_attention, self.rng, q, k, v)
        return core_attention(q, k, v)
