"""Which parameters share a gradient bucket (--overlap-grad-reduce, --ddp-bucket-size, --ddp-num-buckets).

Megatron's rules (megatron/core/distributed: distributed_data_parallel.py, param_and_grad_buffer.py):
- parameters are taken in reverse order (roughly the order backward finishes their gradients);
  a bucket closes once it holds at least `bucket_size` elements;
- without --overlap-grad-reduce there is no bucketing (one bucket), and a pipeline stage other
  than the first never buckets either (its reduce is off the critical path);
- the bucket size is --ddp-bucket-size, or this rank's parameter count / --ddp-num-buckets, or by
  default max(40M, 1M x DP) elements;
- with the distributed optimizer the tied word embedding gets a bucket of its own, so the first
  and last stage shard it the same way and its embedding-group all-reduce works on ranges.
"""

from __future__ import annotations

from argparse import Namespace

import torch

DEFAULT_BUCKET_ELEMENTS = 40_000_000
DEFAULT_BUCKET_ELEMENTS_PER_DP_RANK = 1_000_000


def resolve_bucket_size(args: Namespace, dp_size: int, pp_rank: int, local_elements: int) -> int | None:
    """Elements per bucket for this rank, None for one bucket (no bucketing)."""
    if not args.overlap_grad_reduce or pp_rank > 0:
        return None
    if args.ddp_num_buckets is not None:
        return max(1, local_elements // args.ddp_num_buckets)
    if args.ddp_bucket_size is not None:
        return args.ddp_bucket_size
    return max(DEFAULT_BUCKET_ELEMENTS, DEFAULT_BUCKET_ELEMENTS_PER_DP_RANK * dp_size)


def bucket_parameters(params: list[torch.nn.Parameter], bucket_size: int | None,
                      alone: torch.nn.Parameter | None = None) -> list[list[torch.nn.Parameter]]:
    """`params` (the model's order) cut into buckets, in reverse order: bucket 0 holds the last
    parameters. `alone`, when given, is put in a bucket by itself."""
    buckets: list[list[torch.nn.Parameter]] = []
    current: list[torch.nn.Parameter] = []
    elements = 0
    for p in reversed(params):
        if p is alone:
            if current:
                buckets.append(current)
            buckets.append([p])
            current, elements = [], 0
            continue
        current.append(p)
        elements += p.numel()
        if bucket_size is not None and elements >= bucket_size:
            buckets.append(current)
            current, elements = [], 0
    if current:
        buckets.append(current)
    return buckets
