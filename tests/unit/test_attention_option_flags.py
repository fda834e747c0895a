"""The attention and normalization flags of Megatron: --group-query-attention / --num-query-groups,
--qk-layernorm, --apply-query-key-layer-scaling, --normalization RMSNorm and --norm-epsilon. Their
defaults, the fields they resolve, and bad combinations refused with the flag and the fix (BASE
has 4 heads)."""

import pytest

from unit.test_arguments import config_error, parse

GQA = {"--group-query-attention": True}


def test_defaults_are_megatrons():
    args = parse()
    assert args.group_query_attention is False and args.num_query_groups == 4  # a key/value head per head
    assert args.qk_layernorm is False and args.apply_query_key_layer_scaling is False
    assert args.normalization == "LayerNorm" and args.norm_epsilon == args.layernorm_epsilon == 1e-5
    assert args.attention_softmax_in_fp32 is False


def test_num_query_groups_counts_key_value_heads():
    assert parse(dict(GQA, **{"--num-query-groups": 2})).num_query_groups == 2
    assert parse(GQA).num_query_groups == 1  # Megatron's default with the flag: multi-query attention
    # Without --group-query-attention Megatron ignores --num-query-groups: every head is its own group.
    assert parse({"--num-query-groups": 2}).num_query_groups == 4


@pytest.mark.parametrize("groups", [3, 8])
def test_heads_must_split_into_the_groups(groups):
    message = config_error(dict(GQA, **{"--num-query-groups": groups}))
    assert f"--num-attention-heads 4 is not divisible by --num-query-groups {groups}" in message


def test_tp_must_split_the_groups():
    message = config_error(dict(GQA, **{"--num-query-groups": 2, "--tensor-model-parallel-size": 4}), world_size=4)
    assert "--num-query-groups 2 is not divisible by --tensor-model-parallel-size 4" in message
    assert "multiple of TP" in message
    assert parse(dict(GQA, **{"--num-query-groups": 2, "--tensor-model-parallel-size": 2}), world_size=2)


def test_zero_groups_is_refused():
    assert "--num-query-groups 0: must be a positive integer" in config_error(dict(GQA, **{"--num-query-groups": 0}))


def test_layer_scaling_puts_the_softmax_in_fp32_as_megatron():
    assert parse({"--apply-query-key-layer-scaling": True}).attention_softmax_in_fp32 is True


def test_rmsnorm_and_qk_layernorm_are_accepted():
    args = parse({"--normalization": "RMSNorm", "--qk-layernorm": True})
    assert args.normalization == "RMSNorm" and args.qk_layernorm is True


def test_norm_epsilon_is_megatrons_name_for_the_epsilon():
    args = parse({"--norm-epsilon": 1e-6})
    assert args.norm_epsilon == args.layernorm_epsilon == 1e-6
    args = parse({"--layernorm-epsilon": 1e-6})
    assert args.norm_epsilon == args.layernorm_epsilon == 1e-6
    assert parse({"--layernorm-epsilon": 1e-6, "--norm-epsilon": 1e-6}).norm_epsilon == 1e-6


def test_disagreeing_epsilons_are_refused():
    message = config_error({"--layernorm-epsilon": 1e-6, "--norm-epsilon": 1e-7})
    assert "--norm-epsilon 1e-07 and --layernorm-epsilon 1e-06 disagree" in message
    assert "--norm-epsilon -1.0: must be positive" in config_error({"--norm-epsilon": -1})
