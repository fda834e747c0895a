"""goldtron's DCP values (model_state.py: one key per goldtron tensor, each a GlobalShard in
goldtron's global coordinates) re-addressed to a Megatron-Core GPT checkpoint's keys.

The re-addressing is a change of place only, so the same live tensors (or views of them) are read
or written in place, under any TP/PP/DP and with the distributed optimizer's flat ranges:
- a layer tensor gets the leading layer axis: its shard becomes the slice [layer] of the stacked
  key (a rank's several layers of one key are several chunks of that key);
- a vocabulary tensor keeps its rows and offsets, in a global tensor of the checkpoint's rows
  (Megatron's padded vocabulary of its writer, which holds every real row at the same index);
- Adam's per-parameter step is not a tensor there (Megatron has one `common_step`): those values
  are returned apart, for the caller to set or record.
"""

from __future__ import annotations

import torch

from goldtron.checkpoint.global_shard import GlobalShard, GlobalShardBlocks
from goldtron.checkpoint.megatron_names import megatron_optimizer_key, to_megatron
from goldtron.checkpoint.model_state import ADAM_MOMENTS, OPTIMIZER_PREFIX
from goldtron.model.embedding import WORD_EMBEDDING_NAME
from goldtron.model.gpt import OUTPUT_WEIGHT_NAME

VOCAB_TENSORS = (WORD_EMBEDDING_NAME, OUTPUT_WEIGHT_NAME)
STEP_PREFIX = f"{OPTIMIZER_PREFIX}step."


def _shards(value) -> list[GlobalShard]:
    return list(value.shards) if isinstance(value, GlobalShardBlocks) else [value]


def _lift(shard: GlobalShard, layer: int | None, num_layers: int, vocab_rows: int | None) -> GlobalShard:
    if layer is not None:
        return GlobalShard(shard.local.unsqueeze(0), (num_layers, *shard.global_shape), (layer, *shard.global_offset))
    if vocab_rows is not None:
        return GlobalShard(shard.local, (vocab_rows, *shard.global_shape[1:]), shard.global_offset)
    return shard


def _goldtron_parts(key: str) -> tuple[str | None, str]:
    """goldtron DCP key -> (Adam moment kind or None, parameter name)."""
    for kind in ADAM_MOMENTS:
        prefix = f"{OPTIMIZER_PREFIX}{kind}."
        if key.startswith(prefix):
            return kind, key[len(prefix):]
    return None, key


def to_megatron_values(values: dict, num_layers: int, vocab_rows: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(values under Megatron's keys, {goldtron step key: step tensor}). `values` are model_state's
    DCP values (load targets or what a save writes); `vocab_rows` the vocabulary tensors' rows."""
    out: dict[str, list[GlobalShard]] = {}
    steps = {}
    for key, value in values.items():
        if key.startswith(STEP_PREFIX):
            steps[key] = value
            continue
        kind, name = _goldtron_parts(key)
        place = to_megatron(name)
        target = place.key if kind is None else megatron_optimizer_key(kind, place.key)
        rows = vocab_rows if name in VOCAB_TENSORS else None
        out.setdefault(target, []).extend(_lift(s, place.layer, num_layers, rows) for s in _shards(value))
    return {key: shards[0] if len(shards) == 1 else GlobalShardBlocks(shards) for key, shards in out.items()}, steps
