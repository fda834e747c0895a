"""goldtron parameter names <-> Megatron-Core GPT checkpoint keys (checkpoint/megatron_names.py)."""

from __future__ import annotations

import pytest

from goldtron.arguments import parse_args
from goldtron.checkpoint.megatron_names import (
    MegatronPlace, extra_state_keys, from_megatron, is_layer_key, megatron_optimizer_key, split_optimizer_key, to_megatron,
)
from goldtron.model.gpt import GPTStage
from goldtron.parallel.random import DropoutRNG
from support.torchrun import TINY_MODEL

# The tensor keys of a Megatron-Core 0.16.1 GPTModel (local spec, learned positions, biases,
# LayerNorm, tied embedding), as its torch_dist checkpoint's .metadata lists them.
MEGATRON_DEFAULT_GPT_KEYS = {
    "embedding.word_embeddings.weight", "embedding.position_embeddings.weight",
    "decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
    *(f"decoder.layers.{name}" for name in (
        "self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.layer_norm_bias",
        "self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias",
        "self_attention.linear_proj.weight", "self_attention.linear_proj.bias",
        "mlp.linear_fc1.layer_norm_weight", "mlp.linear_fc1.layer_norm_bias",
        "mlp.linear_fc1.weight", "mlp.linear_fc1.bias", "mlp.linear_fc2.weight", "mlp.linear_fc2.bias")),
}
VARIANT = ["--position-embedding-type", "rope", "--swiglu", "--normalization", "RMSNorm", "--qk-layernorm",
           "--disable-bias-linear", "--untie-embeddings-and-output-weights"]


def _goldtron_names(ps, flags: list[str]) -> list[str]:
    args = parse_args(TINY_MODEL + flags + ["--train-iters", "6"])
    return [name for name, _ in GPTStage(args, ps, DropoutRNG(args.seed, 0, 0, ps.device)).named_parameters()]


def test_default_gpt_maps_onto_megatrons_keys_layer_by_layer(one_rank_state):
    names = _goldtron_names(one_rank_state, [])
    places = [to_megatron(name) for name in names]
    assert {p.key for p in places} == MEGATRON_DEFAULT_GPT_KEYS
    # Each stacked key gets every layer exactly once; the others no layer.
    for key in MEGATRON_DEFAULT_GPT_KEYS:
        layers = sorted(p.layer for p in places if p.key == key)
        assert layers == (list(range(4)) if is_layer_key(key) else [None])
    assert to_megatron("decoder.layers.3.input_layernorm.bias").key == \
        "decoder.layers.self_attention.linear_qkv.layer_norm_bias"
    assert to_megatron("decoder.layers.2.pre_mlp_layernorm.weight") == \
        MegatronPlace("decoder.layers.mlp.linear_fc1.layer_norm_weight", 2)


@pytest.mark.parametrize("flags", [[], VARIANT], ids=["default", "rope-swiglu-rmsnorm-qknorm-nobias-untied"])
def test_every_name_comes_back(one_rank_state, flags):
    for name in _goldtron_names(one_rank_state, flags):
        place = to_megatron(name)
        assert from_megatron(place.key, place.layer) == name


def test_variant_keys(one_rank_state):
    keys = {to_megatron(n).key for n in _goldtron_names(one_rank_state, VARIANT)}
    assert "output_layer.weight" in keys and "embedding.position_embeddings.weight" not in keys
    assert "decoder.layers.self_attention.q_layernorm.weight" in keys
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert not any(k.endswith(".bias") for k in keys)  # RMSNorm, no linear biases


def test_optimizer_and_extra_state_keys():
    key = "decoder.layers.mlp.linear_fc1.weight"
    assert megatron_optimizer_key("exp_avg_sq", key) == "optimizer.state.exp_avg_sq." + key
    assert split_optimizer_key(megatron_optimizer_key("exp_avg", key)) == ("exp_avg", key)
    assert split_optimizer_key(key) == (None, key)
    assert extra_state_keys(2) == [f"decoder.layers.{linear}._extra_state/shard_{i}_2"
                                   for linear in ("self_attention.linear_qkv", "self_attention.linear_proj",
                                                  "mlp.linear_fc1", "mlp.linear_fc2") for i in range(2)]
    with pytest.raises(ValueError):
        from_megatron("embedding.word_embeddings.weight", 0)
