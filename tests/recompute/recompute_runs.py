"""Shared pieces of the recompute tests: the settings compared, dropout on, and a one-process
GPT stage with the bytes its layers keep alive for backward."""

from __future__ import annotations

import torch
from support.torchrun import TINY_MODEL

from goldtron.arguments import parse_args
from goldtron.model.gpt import GPTStage
from goldtron.model.recompute import run_layer_chunks
from goldtron.parallel.random import DropoutRNG
from goldtron.training.memory import CpuAllocationCounter

# Dropout on (hidden and attention) so that a recompute with other masks than the first forward
# changes the gradients: this is what makes the equality tests able to fail.
DROPOUT_ON = ["--hidden-dropout", "0.1", "--attention-dropout", "0.1"]
SELECTIVE = ["--recompute-granularity", "selective"]


def full(method: str, num_layers: int) -> list[str]:
    return ["--recompute-granularity", "full", "--recompute-method", method, "--recompute-num-layers", str(num_layers)]


def build_stage(ps, extra: list[str]) -> GPTStage:
    """TINY_MODEL with dropout on, as one stage (TP1 x PP1) on `ps`."""
    args = parse_args([*TINY_MODEL, *DROPOUT_ON, "--train-iters", "10", *extra])
    return GPTStage(args, ps, DropoutRNG(args.seed, 0, 0, ps.device))


def bytes_alive_after_layers(ps, flags: list[str]) -> int:
    """Bytes of the new tensors that a training forward of the stage's layers leaves alive (kept
    for backward, plus the output), counted exactly by the CPU storage counter."""
    model = build_stage(ps, flags)
    x = torch.randn(2, 32, 64, requires_grad=True)
    with CpuAllocationCounter() as counter:
        counter.track_existing([x, *model.parameters()])  # not new: views of them must not count
        before = counter.allocated
        out = run_layer_chunks(list(model.decoder.layers.values()), x, model.decoder.recompute_groups[0], model.decoder.rng)
        alive = counter.allocated - before
    del out
    return alive
