"""Where each goldtron tensor lives in a Megatron-Core GPT torch_dist checkpoint, and back.

Facts (Megatron-Core 0.16, GPTModel with the local or Transformer Engine layer spec):
- The transformer layers are stacked: one key per tensor kind, with a leading layer axis.
  goldtron's `decoder.layers.7.self_attention.linear_qkv.weight` is slice 7 of
  `decoder.layers.self_attention.linear_qkv.weight`, global shape [num_layers, 3h, h].
- Layer norms carry Transformer Engine's names even with the local spec (its
  `sharded_state_dict_keys_map`): `input_layernorm.{weight,bias}` is saved as
  `self_attention.linear_qkv.layer_norm_{weight,bias}`, `pre_mlp_layernorm.*` as
  `mlp.linear_fc1.layer_norm_*`.
- Everything else has goldtron's name: the embedding, position embedding, final layer norm,
  untied `output_layer.weight`, Q/K layer norms. The QKV rows are per group `[q_g, k_g, v_g]`,
  head-major, in both; SwiGLU's fc1 is `[gate; up]` in both.
- Vocabulary tensors are saved padded to Megatron's size for the writer's TP,
  ceil(V / (make_vocab_size_divisible_by x TP)) x that multiple; the padded rows are trained.
- Adam's moments are `optimizer.state.{exp_avg,exp_avg_sq}.<model key>`, shaped like the model
  tensor (the non-distributed optimizer's form, and the distributed optimizer's with
  `--dist-ckpt-optim-fully-reshardable`); the step is one `common_step` in common.pt (the
  distributed optimizer's form keeps it as each param group's `step` there).
- Every linear layer has an `_extra_state` object (None for the local spec's layers), saved per
  layer as `<stacked key>._extra_state/shard_<layer>_<num_layers>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYER_PREFIX = "decoder.layers."
# goldtron's layer-norm module -> the name Megatron saves its parameters under (prefix of weight/bias).
TE_NORM_NAMES = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                 "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
MEGATRON_OPTIMIZER_PREFIX = "optimizer.state."
MEGATRON_MOMENTS = ("exp_avg", "exp_avg_sq")
# The linear layers of a GPT layer, each with an `_extra_state` entry in Megatron's checkpoint.
LAYER_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class MegatronPlace:
    """A goldtron tensor's Megatron key, and its index on the stacked layer axis (None: not a layer tensor)."""

    key: str
    layer: int | None


def to_megatron(name: str) -> MegatronPlace:
    """goldtron parameter name -> Megatron's key and layer slice."""
    match = _LAYER_NAME.fullmatch(name)
    if match is None:
        return MegatronPlace(name, None)
    layer, rest = int(match.group(1)), match.group(2)
    for ours, theirs in TE_NORM_NAMES.items():
        if rest.startswith(ours):
            rest = theirs + rest[len(ours):]
            break
    return MegatronPlace(LAYER_PREFIX + rest, layer)


def from_megatron(key: str, layer: int | None) -> str:
    """Megatron's key and layer slice -> goldtron parameter name (the inverse of to_megatron)."""
    if layer is None:
        return key
    if not key.startswith(LAYER_PREFIX):
        raise ValueError(f"{key} is not a stacked layer tensor, so it has no layer {layer}")
    rest = key[len(LAYER_PREFIX):]
    for ours, theirs in TE_NORM_NAMES.items():
        if rest.startswith(theirs):
            rest = ours + rest[len(theirs):]
            break
    return f"{LAYER_PREFIX}{layer}.{rest}"


def is_layer_key(key: str) -> bool:
    """A stacked layer tensor (leading layer axis), as opposed to the embedding or final norm."""
    return key.startswith(LAYER_PREFIX)


def megatron_optimizer_key(kind: str, key: str) -> str:
    return f"{MEGATRON_OPTIMIZER_PREFIX}{kind}.{key}"


def split_optimizer_key(key: str) -> tuple[str | None, str]:
    """'optimizer.state.exp_avg.<model key>' -> ('exp_avg', '<model key>'); a model key -> (None, key)."""
    if key.startswith(MEGATRON_OPTIMIZER_PREFIX):
        kind, _, rest = key[len(MEGATRON_OPTIMIZER_PREFIX):].partition(".")
        return kind, rest
    return None, key


def extra_state_keys(num_layers: int) -> list[str]:
    """The `_extra_state` entries a Megatron GPT checkpoint of `num_layers` layers holds."""
    return [f"{LAYER_PREFIX}{linear}._extra_state/shard_{layer}_{num_layers}"
            for linear in LAYER_LINEARS for layer in range(num_layers)]
