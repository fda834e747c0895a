"""Recomputation under Megatron's uneven pipeline split (8 layers, PP4, first 1 / last 1: stages of
1, 3, 3, 1 layers): block N recomputes the first N layers *of each stage* (all of a stage that has
fewer), N is checked against the stages' own layer counts, and training is unchanged bit for bit."""

from pathlib import Path

import pytest
import torch
from support.torchrun import TINY_MODEL, layout_flags, train_batches_and_read

from goldtron.arguments import ConfigError, parse_args
from goldtron.model.gpt import GPTStage
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState
from recompute.recompute_runs import DROPOUT_ON, full

UNEVEN = ["--num-layers", "8", "--decoder-first-pipeline-num-layers", "1", "--decoder-last-pipeline-num-layers", "1"]


def _argv(flags: list[str]) -> list[str]:
    return [*TINY_MODEL, *UNEVEN, *layout_flags(1, 4), "--train-iters", "4", *flags]


def _stage(pp_rank: int, flags: list[str]) -> GPTStage:
    """Stage `pp_rank` of the PP4 split, built in this process (no collective is needed to build it)."""
    args = parse_args(_argv(flags), world_size=4)
    ps = ParallelState(world_size=4, rank=pp_rank, tp_size=1, pp_size=4, dp_size=1, device=torch.device("cpu"),
                       backend="gloo")
    return GPTStage(args, ps, DropoutRNG(args.seed, pp_rank, 0, ps.device))


@pytest.mark.parametrize("pp_rank, layers, recomputed", [
    (0, ["0"], [True]),                      # one layer, fewer than N = 2: all of it
    (1, ["1", "2", "3"], [True, True, False]),
    (2, ["4", "5", "6"], [True, True, False]),
    (3, ["7"], [True]),
])
def test_block_recomputes_the_first_n_layers_of_each_stage(pp_rank, layers, recomputed):
    decoder = _stage(pp_rank, full("block", 2)).decoder
    assert list(decoder.layers) == layers  # global layer numbers
    per_layer = [chunk.recompute for chunk in decoder.recompute_groups[0] for _ in range(chunk.start, chunk.stop)]
    assert per_layer == recomputed


def test_uniform_chunks_cover_each_stage():
    for pp_rank, count in enumerate([1, 3, 3, 1]):
        chunks = _stage(pp_rank, full("uniform", 1)).decoder.recompute_groups[0]
        assert [(c.start, c.stop, c.recompute) for c in chunks] == [(i, i + 1, True) for i in range(count)]


@pytest.mark.parametrize("flags, words", [
    (full("block", 4), ["--recompute-num-layers 4", "3 here", "1,3,3,1 layers per stage"]),
    (full("uniform", 3), ["--recompute-method uniform", "--recompute-num-layers 3", "stage 0 has 1",
                          "stage 3 has 1"]),
    (full("uniform", 2), ["stage 0 has 1", "stage 1 has 3", "stage 2 has 3", "stage 3 has 1"]),
])
def test_n_is_checked_against_each_stages_layers(flags, words):
    with pytest.raises(ConfigError) as info:
        parse_args(_argv(flags), world_size=4)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_n_up_to_the_largest_stage_is_accepted():
    args = parse_args(_argv(full("block", 3)), world_size=4)
    assert (args.recompute_method, args.recompute_num_layers) == ("block", 3)


def test_block_recompute_on_uneven_pp4_is_bitwise_the_plain_run(tmp_path: Path):
    """Dropout on: a recompute with other masks, or on other layers than the stage's, would differ."""
    flags = [*TINY_MODEL, *UNEVEN, *layout_flags(1, 4), *DROPOUT_ON, "--train-iters", "3"]
    runs = train_batches_and_read(tmp_path, {"plain": (4, flags), "block": (4, flags + full("block", 2))})
    plain, block = runs["plain"], runs["block"]
    keys = ("lm_loss", "grad_norm", "params_norm", "num_zeros")
    assert len(plain) == 3
    assert [[s[k] for k in keys] for s in block] == [[s[k] for k in keys] for s in plain]
