"""RoPE (`--position-embedding-type rope`) against a slow, direct reference: one rotation matrix per
position, built element by element in float64 from the definition (channel i paired with
i + dim/2, or with --rotary-interleaved channel 2i with 2i + 1; angle position / base^(2i/dim));
and the properties that make it a position encoding."""

import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from goldtron.model.rotary import RotaryEmbedding, apply_rotary, rotary_angles
from goldtron.model.transformer import SelfAttention
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState

# fp32 tables and products against a float64 reference: angles up to ~30 rad carry ~4e-6
# absolute rounding in fp32, so results agree to ~1e-5; a wrong pairing, sign or frequency is O(1).
ATOL = 2e-5


def reference_rotation(position: int, head_dim: int, rotary_dim: int, base: float,
                       interleaved: bool = False) -> torch.Tensor:
    """[head_dim, head_dim] float64 matrix R with x_rotated = R x, from the definition."""
    rotation = torch.eye(head_dim, dtype=torch.float64)
    half = rotary_dim // 2
    for i in range(half):
        angle = position / base ** (2 * i / rotary_dim)
        c, s = math.cos(angle), math.sin(angle)
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        # the pair (a, b) turns by `angle`: x_a' = x_a c - x_b s, x_b' = x_a s + x_b c
        rotation[a, a], rotation[a, b] = c, -s
        rotation[b, a], rotation[b, b] = s, c
    return rotation


def reference_rope(x: torch.Tensor, rotary_dim: int, base: float, interleaved: bool = False) -> torch.Tensor:
    """x [..., seq, d] rotated position by position with the matrices above (float64)."""
    out = torch.empty_like(x, dtype=torch.float64)
    for p in range(x.shape[-2]):
        rotation = reference_rotation(p, x.shape[-1], rotary_dim, base, interleaved)
        out[..., p, :] = x[..., p, :].double() @ rotation.T
    return out


@pytest.mark.parametrize("head_dim, percent, base", [(16, 1.0, 10000.0), (16, 0.5, 10000.0), (8, 1.0, 500.0)])
def test_rope_matches_per_position_rotation_matrices(head_dim, percent, base):
    rotary_dim = int(head_dim * percent)
    x = torch.randn(2, 3, 31, head_dim, generator=torch.Generator().manual_seed(0))
    angles = rotary_angles(31, rotary_dim, base)
    ours = apply_rotary(x, angles.cos(), angles.sin())
    torch.testing.assert_close(ours.double(), reference_rope(x, rotary_dim, base), atol=ATOL, rtol=0)
    # channels past rotary_dim pass through untouched (rotary_percent < 1)
    assert torch.equal(ours[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("head_dim, percent", [(16, 1.0), (16, 0.5)])
def test_interleaved_rope_matches_its_rotation_matrices(head_dim, percent):
    rotary_dim = int(head_dim * percent)
    x = torch.randn(2, 3, 31, head_dim, generator=torch.Generator().manual_seed(3))
    angles = rotary_angles(31, rotary_dim, 10000.0, interleaved=True)
    ours = apply_rotary(x, angles.cos(), angles.sin(), interleaved=True)
    torch.testing.assert_close(ours.double(), reference_rope(x, rotary_dim, 10000.0, interleaved=True), atol=ATOL, rtol=0)
    assert torch.equal(ours[..., rotary_dim:], x[..., rotary_dim:])
    # a real difference from the default pairing (else the flag would change nothing)
    default = rotary_angles(31, rotary_dim, 10000.0)
    assert not torch.allclose(ours, apply_rotary(x, default.cos(), default.sin()), atol=1e-2)


def test_interleaved_pairs_are_the_default_ones_with_channels_reordered():
    """Interleaved RoPE of x equals default RoPE of x with channels (0, 2, 4, ..., 1, 3, 5, ...),
    put back in place: the same rotation, only which channels form a pair differs. Bitwise: the
    same products and sums per element, only gathered in another order."""
    x = torch.randn(1, 2, 9, 8, generator=torch.Generator().manual_seed(4))
    order = torch.cat((torch.arange(0, 8, 2), torch.arange(1, 8, 2)))
    inter, plain = rotary_angles(9, 8, 10000.0, interleaved=True), rotary_angles(9, 8, 10000.0)
    ours = apply_rotary(x, inter.cos(), inter.sin(), interleaved=True)
    via_default = apply_rotary(x[..., order], plain.cos(), plain.sin())
    assert torch.equal(ours[..., order], via_default)


def test_position_zero_is_the_identity():
    q, k = torch.randn(2, 4, 5, 16, generator=torch.Generator().manual_seed(1)).unbind(0)
    rq, rk = RotaryEmbedding(16, 10000.0)(q.unsqueeze(0), k.unsqueeze(0))
    assert torch.equal(rq[0, :, 0], q[:, 0]) and torch.equal(rk[0, :, 0], k[:, 0])
    assert not torch.allclose(rq[0, :, 1], q[:, 1])  # and later positions do move


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("percent", [1.0, 0.5])
def test_query_key_product_depends_only_on_the_distance(percent, interleaved):
    """q at position m and k at position n: <R_m q, R_n k> is a function of m - n."""
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    seq = 24
    rope = RotaryEmbedding(int(16 * percent), 10000.0, interleaved)
    rq, rk = rope(q.expand(1, 1, seq, 16), k.expand(1, 1, seq, 16))
    scores = rq[0, 0] @ rk[0, 0].T  # scores[m, n] = <q at m, k at n>
    for distance in (0, 3, 7):
        diagonal = torch.diagonal(scores, offset=-distance)  # all (m, m - distance)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=ATOL, rtol=0)
    assert abs(scores[5, 2] - scores[5, 4]) > 1e-3  # different distances, different products


def _attention_args(**changes) -> Namespace:
    args = dict(hidden_size=32, num_attention_heads=2, kv_channels=16, attention_dropout=0.0,
                attention_softmax_in_fp32=False, params_dtype=torch.float32, init_method_std=0.3, num_layers=2,
                seed=5, add_bias_linear=True, position_embedding_type="rope", rotary_dim=8, rotary_base=10000,
                rotary_interleaved=False, recompute_granularity=None, num_query_groups=2, qk_layernorm=False,
                apply_query_key_layer_scaling=False, normalization="LayerNorm", norm_epsilon=1e-5,
                sequence_parallel=False)
    args.update(changes)
    return Namespace(**args)


@pytest.mark.parametrize("interleaved", [False, True])
def test_attention_rotates_queries_and_keys_not_values(interleaved):
    """The attention of a rope model is the reference: split q, k, v per head, rotate q and k by
    the per-position matrices (--rotary-interleaved: the interleaved pairs), causal softmax
    attention, output projection."""
    args = _attention_args(rotary_interleaved=interleaved)
    ps = ParallelState(world_size=1, rank=0, tp_size=1, pp_size=1, dp_size=1, device=torch.device("cpu"),
                       backend="gloo")
    attention = SelfAttention(args, ps, "decoder.layers.0.self_attention", DropoutRNG(args.seed, 0, 0, ps.device), 1)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        qkv = F.linear(x, attention.linear_qkv.weight, attention.linear_qkv.bias).view(2, 9, 2, 3, 16)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2).double() for i in range(3))
        q, k = reference_rope(q, 8, 10000.0, interleaved), reference_rope(k, 8, 10000.0, interleaved)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(16)
        scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32)
        expected = F.linear(context, attention.linear_proj.weight.double(), attention.linear_proj.bias.double())
        ours = attention(x)
    assert expected.abs().max() > 0.5  # large enough weights that positions change the scores a lot
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-5)
    without = SelfAttention(_attention_args(position_embedding_type="learned_absolute"), ps,
                            "decoder.layers.0.self_attention", DropoutRNG(args.seed, 0, 0, ps.device), 1)
    with torch.no_grad():
        assert (without(x) - ours).abs().max() > 0.05  # rope changed the result
