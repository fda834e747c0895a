"""Context parallelism's split of the sequence (`--context-parallel-size` CP): which positions a CP
rank holds, and its part of a micro-batch.

Causal attention makes late positions cost more than early ones (a query attends to every earlier
key), so Megatron does not give rank r the r-th CP-th of the sequence: it cuts the sequence into
2 x CP equal chunks and gives rank r chunks r and 2CP-1-r, an early and a late one, so every rank
does the same attention work (Megatron's get_batch_on_this_cp_rank). Tokens, labels, the loss mask
and the position ids are cut the same way, along the sequence (dim 1); everything per token (the
embedding, the layers outside attention, the LM head and the loss) then runs on this rank's part
alone, and only attention needs the other ranks (parallel/context_attention.py).
"""

from __future__ import annotations

import torch

from goldtron.parallel.schedule import MicroBatch
from goldtron.parallel.sequence_parallel import SEQUENCE_DIM


def rank_positions(seq_length: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """The sequence positions CP rank `cp_rank` holds, in its order (chunk r, then chunk 2CP-1-r):
    [seq_length / CP] int64."""
    if cp_size == 1:
        return torch.arange(seq_length)
    chunk = seq_length // (2 * cp_size)
    first, second = cp_rank, 2 * cp_size - 1 - cp_rank
    return torch.cat([torch.arange(first * chunk, (first + 1) * chunk),
                      torch.arange(second * chunk, (second + 1) * chunk)])


def micro_batch_part(mb: MicroBatch, cp_size: int, cp_rank: int) -> MicroBatch:
    """This CP rank's part of a whole micro-batch (its positions along the sequence), knowing the
    whole one's loss tokens."""
    if cp_size == 1:
        return mb
    positions = rank_positions(mb.tokens.shape[SEQUENCE_DIM], cp_size, cp_rank).to(mb.tokens.device)
    parts = (t.index_select(SEQUENCE_DIM, positions) for t in (mb.tokens, mb.labels, mb.loss_mask, mb.position_ids))
    return MicroBatch(*parts, whole_loss_tokens=float(mb.loss_mask.sum()))
