"""A flat range of a parameter's local tensor (what a distributed-optimizer rank owns) as pieces
of the parameter's saved global tensor, so sharded Adam state is saved in the ordinary format.

A flat range [start, end) of a row-major [R, C] tensor is in general not a rectangle: it is a
partial first row, whole middle rows and a partial last row. Each of those (at most three, split
again at SwiGLU block boundaries and cut at the real vocabulary rows) is a rectangle, written as
its own chunk at its global offset. Why per-row chunks rather than gathering a parameter's state
onto one writer: no collective and no extra memory (the chunks are views of the owned state),
and DCP already reads any target from whichever saved chunks overlap it, so a checkpoint written
this way loads under any layout, with or without the distributed optimizer, and vice versa.
"""

from __future__ import annotations

import torch

from goldtron.checkpoint.global_shard import GlobalShard, GlobalShardBlocks


def _row_rectangles(start: int, end: int, row_length: int) -> list[tuple[int, int, int, int]]:
    """(first row, first column, rows, columns) rectangles covering flat [start, end), in order."""
    first_row, first_col = divmod(start, row_length)
    last_row, last_col = divmod(end, row_length)  # end is exclusive
    if first_row == last_row:
        return [(first_row, first_col, 1, last_col - first_col)]
    rects = []
    if first_col:
        rects.append((first_row, first_col, 1, row_length - first_col))
        first_row += 1
    if last_row > first_row:
        rects.append((first_row, 0, last_row - first_row, row_length))
    if last_col:
        rects.append((last_row, 0, 1, last_col))
    return rects


def _split_rows(row: int, rows: int, every: int) -> list[tuple[int, int]]:
    """[row, row + rows) cut at multiples of `every`."""
    out = []
    while rows > 0:
        take = min(rows, every - row % every)
        out.append((row, take))
        row, rows = row + take, rows - take
    return out


def flat_range_shard(place, start: int, end: int, flat: torch.Tensor) -> GlobalShard | GlobalShardBlocks | None:
    """`flat` (the state of local elements [start, end) of place.param) as DCP values at their
    places in the saved global tensor; None when the range holds only padded vocabulary rows."""
    param = place.param
    if place.blocks > 1 and param.tensor_parallel_dim != 0:
        raise NotImplementedError("flat ranges of a tensor split in blocks along dim 1")  # no such layer today
    if param.dim() == 1:
        rows_total, row_length = param.shape[0], 1
    else:
        rows_total, row_length = param.shape[0], param.shape[1]
    real_rows = place.rows if place.rows is not None else rows_total
    block_rows = rows_total // place.blocks
    global_block_rows = place.global_shape[0] // place.blocks
    shards = []
    for row, col, rows, cols in _row_rectangles(start, end, row_length):
        rows = min(rows, real_rows - row)
        for r, n in _split_rows(row, max(rows, 0), block_rows):
            at = r * row_length + col - start
            block, within = divmod(r, block_rows)
            global_row = place.global_offset[0] + block * global_block_rows + within
            if param.dim() == 1:
                shards.append(GlobalShard(flat[at : at + n], place.global_shape, (global_row,)))
            else:
                local = flat[at : at + n * cols].view(n, cols)  # whole rows, or one partial row (n == 1)
                shards.append(GlobalShard(local, place.global_shape, (global_row, place.global_offset[1] + col)))
    if not shards:
        return None
    return shards[0] if len(shards) == 1 else GlobalShardBlocks(shards)
