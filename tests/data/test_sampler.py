"""The sampler: layout-independent global batches, disjoint DP shares, exact resume; collate."""

import numpy as np
import pytest
import torch

from goldtron.data.sampler import collate, micro_batch_sample_indices

GLOBAL_BATCH, MICRO_BATCH = 16, 2


def step_samples(consumed, dp_size):
    """All samples of one step, per (dp_rank, micro-batch)."""
    num_micro_batches = GLOBAL_BATCH // (MICRO_BATCH * dp_size)
    return {rank: micro_batch_sample_indices(consumed, MICRO_BATCH, dp_size, rank, num_micro_batches) for rank in range(dp_size)}


@pytest.mark.parametrize("dp_size", [1, 2, 4, 8])
def test_global_batch_is_the_same_whatever_the_layout(dp_size):
    for step in range(3):
        consumed = step * GLOBAL_BATCH
        shares = step_samples(consumed, dp_size)
        flat = [i for rank in shares.values() for micro in rank for i in micro]
        assert sorted(flat) == list(range(consumed, consumed + GLOBAL_BATCH))
        # Ranks are disjoint: the flat list had no repeats.
        assert len(set(flat)) == len(flat)


def test_megatron_order_within_a_step():
    # dp 2, micro 2: rank 0 takes 0-1, rank 1 takes 2-3, then rank 0 takes 4-5 ...
    assert micro_batch_sample_indices(32, 2, 2, 0, 2) == [[32, 33], [36, 37]]
    assert micro_batch_sample_indices(32, 2, 2, 1, 2) == [[34, 35], [38, 39]]


def test_resume_continues_on_the_next_sample():
    def run(first_step, last_step):
        seen = []
        for step in range(first_step, last_step):
            for rank_share in step_samples(step * GLOBAL_BATCH, 2).values():
                seen += [i for micro in rank_share for i in micro]
        return seen

    uninterrupted = run(0, 6)
    resumed = run(0, 3) + run(3, 6)  # resume from consumed_samples = 3 * GLOBAL_BATCH
    assert sorted(resumed) == sorted(uninterrupted) == list(range(6 * GLOBAL_BATCH))


def test_bad_sampler_arguments_are_rejected():
    with pytest.raises(ValueError, match="dp_rank 2"):
        micro_batch_sample_indices(0, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        micro_batch_sample_indices(0, 0, 1, 0, 1)


def test_collate_shifts_labels_and_masks():
    samples = [np.array([1, 2, 3, 9, 4]), np.array([5, 6, 7, 8, 9])]
    tokens, labels, loss_mask, position_ids = collate(samples)
    assert tokens.tolist() == [[1, 2, 3, 9], [5, 6, 7, 8]]
    assert labels.tolist() == [[2, 3, 9, 4], [6, 7, 8, 9]]
    assert tokens.dtype == labels.dtype == position_ids.dtype == torch.int64
    assert loss_mask.dtype == torch.float32 and bool((loss_mask == 1).all())
    assert position_ids.tolist() == [[0, 1, 2, 3]] * 2
    _, _, eod_masked, _ = collate(samples, eod_mask_loss=True, eod=9)
    assert eod_masked.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
