"""The fused QKV projection's layout, with grouped-query attention (Megatron-Core's `linear_qkv`).

Heads come in G query groups (`--num-query-groups`; G = heads without `--group-query-attention`).
Each group has heads/G query heads and one key head and one value head that they all attend with.
The [(heads + 2G) x d, h] weight holds, group after group: the group's query heads, then its key,
then its value (Megatron's [ng, (np/ng + 2) x hn] view). With G = heads a group is one head's
q, k, v, which is the head-major layout of plain multi-head attention, so GQA with G = heads is
that model bit for bit. A contiguous split over TP hands each rank whole groups (G divisible by
TP is validated), so the weight shards and reshards like any column-parallel weight.
"""

from __future__ import annotations

from argparse import Namespace

import torch

from goldtron.model.init import normal_full


def qkv_rows(args: Namespace) -> int:
    """Output rows of linear_qkv: every query head, and one key and one value per group."""
    return (args.num_attention_heads + 2 * args.num_query_groups) * args.kv_channels


def qkv_full_weight(args: Namespace, name: str) -> torch.Tensor:
    """The full QKV weight in the per-group layout above. Q, K and V are drawn whole from the seed
    ([heads x d, h], [G x d, h], [G x d, h]) and interleaved, so they do not depend on TP."""
    h, heads, groups, d = args.hidden_size, args.num_attention_heads, args.num_query_groups, args.kv_channels
    std = args.init_method_std
    q = normal_full(args.seed, f"{name}.q", (heads * d, h), std).view(groups, heads // groups, d, h)
    k = normal_full(args.seed, f"{name}.k", (groups * d, h), std).view(groups, 1, d, h)
    v = normal_full(args.seed, f"{name}.v", (groups * d, h), std).view(groups, 1, d, h)
    return torch.cat([q, k, v], dim=1).reshape(qkv_rows(args), h)


def split_qkv(mixed: torch.Tensor, local_groups: int, heads_per_group: int, head_dim: int):
    """[b, s, local rows] -> q [b, local heads, s, d], k and v [b, local groups, s, d]."""
    b, s, _ = mixed.shape
    grouped = mixed.view(b, s, local_groups, heads_per_group + 2, head_dim)
    if heads_per_group == 1:
        q = grouped[:, :, :, 0]  # a view, exactly as plain multi-head attention takes it
    else:
        q = grouped[:, :, :, :heads_per_group].reshape(b, s, local_groups * heads_per_group, head_dim)
    k, v = grouped[:, :, :, heads_per_group], grouped[:, :, :, heads_per_group + 1]
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def expand_key_value(k: torch.Tensor, v: torch.Tensor, heads_per_group: int):
    """Repeat each group's key and value for its query heads ([b, G, s, d] -> [b, heads, s, d]):
    query head j belongs to group j // heads_per_group, as in the weight layout."""
    if heads_per_group == 1:
        return k, v
    return k.repeat_interleave(heads_per_group, dim=1), v.repeat_interleave(heads_per_group, dim=1)
