"""Which samples a step uses, and how they reach data-parallel ranks and micro-batches.

Megatron's MegatronPretrainingSampler: the data position is the number of consumed samples,
so resuming from a checkpoint continues on exactly the next sample. Step k's global batch is
samples [consumed, consumed + global_batch) whatever the TP/PP/DP layout; within it, the
micro-batch m of data-parallel rank d is the micro_batch_size samples starting at
consumed + (m * dp_size + d) * micro_batch_size.
"""

from __future__ import annotations

import numpy as np
import torch


def micro_batch_sample_indices(consumed_samples: int, micro_batch_size: int, dp_size: int, dp_rank: int,
                               num_micro_batches: int) -> list[list[int]]:
    """Dataset indices of each of this rank's micro-batches for the step starting at consumed_samples."""
    if consumed_samples < 0 or micro_batch_size < 1 or dp_size < 1 or num_micro_batches < 1:
        raise ValueError(
            f"need consumed_samples >= 0 and positive sizes, got consumed_samples={consumed_samples}, "
            f"micro_batch_size={micro_batch_size}, dp_size={dp_size}, num_micro_batches={num_micro_batches}"
        )
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is outside 0..{dp_size - 1}")
    return [
        list(range(consumed_samples + (m * dp_size + dp_rank) * micro_batch_size,
                   consumed_samples + (m * dp_size + dp_rank + 1) * micro_batch_size))
        for m in range(num_micro_batches)
    ]


def collate(samples, eod_mask_loss: bool = False, eod: int | None = None):
    """Stack samples of seq + 1 tokens into (tokens, labels, loss_mask, position_ids), each [b, seq].

    Labels are the tokens shifted by one. The loss mask is 1.0 everywhere (Megatron's default);
    with `eod_mask_loss` positions whose input token is end-of-document get 0.0, as Megatron's
    `--eod-mask-loss` does.
    """
    stacked = torch.from_numpy(np.stack([np.asarray(sample, dtype=np.int64) for sample in samples]))
    tokens = stacked[:, :-1].contiguous()
    labels = stacked[:, 1:].contiguous()
    loss_mask = torch.ones(tokens.shape, dtype=torch.float32)
    if eod_mask_loss:
        if eod is None:
            raise ValueError("--eod-mask-loss needs the tokenizer's eod id")
        loss_mask[tokens == eod] = 0.0
    position_ids = torch.arange(tokens.shape[1], dtype=torch.int64).unsqueeze(0).expand_as(tokens).contiguous()
    return tokens, labels, loss_mask, position_ids
