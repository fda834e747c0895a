"""checkpoint/flat_range.py: a distributed-optimizer rank's flat range of a parameter becomes
rectangles of the saved global tensor that hold exactly the range's elements, at the places the
whole local tensor's shard puts them (plain rows, SwiGLU blocks, real vocabulary rows)."""

import itertools

import torch

from goldtron.checkpoint.flat_range import flat_range_shard
from goldtron.checkpoint.global_shard import GlobalShard, GlobalShardBlocks
from goldtron.checkpoint.model_state import ParameterPlacement


def _place(shape, global_shape, offset, rows=None, blocks=1, tp_dim=0):
    param = torch.nn.Parameter(torch.zeros(shape))
    param.tensor_parallel_dim = tp_dim
    return ParameterPlacement("w", param, global_shape, offset, rows, False, blocks)


def _scatter(value, global_shape) -> torch.Tensor:
    """The global tensor with the value's chunks written in (NaN elsewhere)."""
    out = torch.full(global_shape, float("nan"))
    shards = value.shards if isinstance(value, GlobalShardBlocks) else [value]
    for s in shards:
        index = tuple(slice(o, o + n) for o, n in zip(s.global_offset, s.local.shape))
        assert torch.isnan(out[index]).all(), "chunks overlap"
        out[index] = s.local
    return out


def _check(place, sizes):
    local = torch.arange(place.param.numel(), dtype=torch.float32).view(place.param.shape)
    whole = _scatter(place.shard(local), place.global_shape)
    numel = local.numel()
    for start, end in itertools.combinations(sorted(set(sizes) | {0, numel}), 2):
        value = flat_range_shard(place, start, end, local.view(-1)[start:end])
        in_range = (whole >= start) & (whole < end)
        if value is None:
            assert not in_range.any()
            continue
        got = _scatter(value, place.global_shape)
        assert torch.equal(torch.isnan(got), ~in_range), (start, end)
        assert torch.equal(got[in_range], whole[in_range]), (start, end)


def test_row_parallel_weight_ranges_with_partial_rows():
    _check(_place((4, 6), (4, 12), (0, 6), tp_dim=1), [1, 5, 6, 7, 13, 18, 23])


def test_swiglu_blocks_and_padded_vocab_rows():
    _check(_place((8, 3), (16, 3), (2, 0), blocks=2), [1, 4, 6, 11, 12, 13, 20])
    _check(_place((6, 4), (9, 4), (6, 0), rows=3), [2, 4, 11, 12, 13, 17])


def test_one_dimensional_ranges():
    _check(_place((10,), (20,), (10,)), [3, 7])
    value = flat_range_shard(_place((10,), (10,), (0,)), 2, 9, torch.ones(7))
    assert isinstance(value, GlobalShard) and value.global_offset == (2,)
