"""The attention options in one process against straightforward float64 references, written from
the definitions: grouped-query attention (each query head attends with its group's key and value,
repeated), --qk-layernorm (LayerNorm or RMSNorm over each head's channels), the layer-scaled
softmax, and RMSNorm. Tolerance 1e-5: fp32 rounding against float64; a head paired with the wrong
group, a norm over the wrong axis or a scale not undone is O(0.1) or more."""

import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from goldtron.model.init import normal_full
from goldtron.model.layer_norm import RMSNorm
from goldtron.model.qkv_layout import qkv_full_weight
from goldtron.model.transformer import SelfAttention
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState

H, HEADS, D, SEQ = 32, 4, 8, 9
SINGLE = ParallelState(world_size=1, rank=0, tp_size=1, pp_size=1, dp_size=1, device=torch.device("cpu"),
                       backend="gloo")
TOL = 1e-5


def attention_args(**changes) -> Namespace:
    args = dict(hidden_size=H, num_attention_heads=HEADS, kv_channels=D, attention_dropout=0.0,
                attention_softmax_in_fp32=False, params_dtype=torch.float32, init_method_std=0.3, num_layers=4,
                seed=7, add_bias_linear=True, position_embedding_type="learned_absolute", rotary_dim=None,
                rotary_base=10000, rotary_interleaved=False, recompute_granularity=None, num_query_groups=HEADS, qk_layernorm=False,
                apply_query_key_layer_scaling=False, normalization="LayerNorm", norm_epsilon=1e-5,
                sequence_parallel=False)
    args.update(changes)
    return Namespace(**args)


def build(args: Namespace, layer_number: int = 1) -> SelfAttention:
    attention = SelfAttention(args, SINGLE, "decoder.layers.0.self_attention", DropoutRNG(args.seed, 0, 0, SINGLE.device),
                              layer_number)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial biases and norm weights, so that misplacing one shows
        for name, p in attention.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("layernorm.weight") else 0.0))
    return attention


def reference_norm(x: torch.Tensor, norm, kind: str) -> torch.Tensor:
    w = norm.weight.double()
    if kind == "RMSNorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps) * w
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * w + norm.bias.double()


def reference_attention(attention: SelfAttention, args: Namespace, x: torch.Tensor) -> torch.Tensor:
    """Head by head in float64: query head j uses the key and value of group j // (heads / G)."""
    groups, per_group = args.num_query_groups, HEADS // args.num_query_groups
    weight = attention.linear_qkv.weight.double().view(groups, per_group + 2, D, H)
    bias = attention.linear_qkv.bias.double().view(groups, per_group + 2, D)
    x = x.double()
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
    contexts = []
    for j in range(HEADS):
        group, member = divmod(j, per_group)
        q = x @ weight[group, member].T + bias[group, member]
        k = x @ weight[group, per_group].T + bias[group, per_group]
        v = x @ weight[group, per_group + 1].T + bias[group, per_group + 1]
        if args.qk_layernorm:
            q = reference_norm(q, attention.q_layernorm, args.normalization)
            k = reference_norm(k, attention.k_layernorm, args.normalization)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(causal, float("-inf"))
        contexts.append(scores.softmax(-1) @ v)
    context = torch.cat(contexts, dim=-1)
    return F.linear(context, attention.linear_proj.weight.double(), attention.linear_proj.bias.double())


@pytest.mark.parametrize("options", [
    {"num_query_groups": 2},
    {"num_query_groups": 1},
    {"num_query_groups": HEADS},
    {"num_query_groups": 2, "qk_layernorm": True},
    {"num_query_groups": 2, "qk_layernorm": True, "normalization": "RMSNorm"},
    {"num_query_groups": 2, "apply_query_key_layer_scaling": True, "attention_softmax_in_fp32": True},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_attention_matches_the_reference(options):
    args = attention_args(**options)
    attention = build(args, layer_number=3)
    x = torch.randn(2, SEQ, H, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, ours = reference_attention(attention, args, x), attention(x).double()
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=TOL)


def test_groups_change_the_result():
    """The reference is not blind to the grouping: two groups compute something else than one."""
    x = torch.randn(2, SEQ, H, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        two, one = build(attention_args(num_query_groups=2))(x), build(attention_args(num_query_groups=1))(x)
    assert (two - one).abs().max() > 0.05


def test_multi_query_has_one_key_and_value_head():
    args = attention_args(num_query_groups=1)
    attention = build(args)
    assert attention.linear_qkv.weight.shape == ((HEADS + 2) * D, H)
    assert attention.linear_qkv.bias.shape == ((HEADS + 2) * D,)
    assert attention.linear_proj.weight.shape == (H, HEADS * D)  # the output still sees every query head


def test_query_weights_do_not_depend_on_the_group_count():
    """Q, K and V are drawn whole from the seed: the query heads of G = 1 and G = heads are equal."""
    mqa, mha = qkv_full_weight(attention_args(num_query_groups=1), "w"), qkv_full_weight(attention_args(), "w")
    assert torch.equal(mqa[: HEADS * D], mha.view(HEADS, 3, D, H)[:, 0].reshape(HEADS * D, H))


def test_groups_equal_to_heads_is_the_head_major_multi_head_layout():
    """G = heads is plain multi-head attention: q, k, v of head 0, then head 1, ... (bit for bit)."""
    args = attention_args()
    q, k, v = (normal_full(args.seed, f"w.{part}", (HEADS * D, H), args.init_method_std) for part in "qkv")
    head_major = torch.stack([q, k, v]).view(3, HEADS, D, H).transpose(0, 1).reshape(3 * HEADS * D, H)
    assert torch.equal(qkv_full_weight(args, "w"), head_major)


def test_layer_scaling_is_the_plain_attention_up_to_rounding():
    x = torch.randn(2, SEQ, H, generator=torch.Generator().manual_seed(3))
    plain = build(attention_args())
    scaled = build(attention_args(apply_query_key_layer_scaling=True, attention_softmax_in_fp32=True), layer_number=4)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), plain(x), atol=1e-6, rtol=1e-6)
    assert scaled.scaling.score_scale == pytest.approx(1 / (math.sqrt(D) * 4))


def test_qk_layernorm_weights_have_megatrons_names_and_head_size():
    names = {n: tuple(p.shape) for n, p in build(attention_args(qk_layernorm=True)).named_parameters()}
    assert names["q_layernorm.weight"] == names["k_layernorm.weight"] == names["q_layernorm.bias"] == (D,)
    rms = {n for n, _ in build(attention_args(qk_layernorm=True, normalization="RMSNorm")).named_parameters()}
    assert "q_layernorm.weight" in rms and "q_layernorm.bias" not in rms


def test_rmsnorm_is_megatrons_formula():
    norm = RMSNorm(16, 1e-5, torch.device("cpu"))
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    expected = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), expected, atol=TOL, rtol=TOL)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias
