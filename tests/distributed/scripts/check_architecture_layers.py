"""The --swiglu MLP, the --disable-bias-linear (and rope) attention and the grouped-query attention
with --qk-layernorm under TP against their single-process twins, on every rank (run under torchrun;
see check_parallel_layers.py, whose `close` and tolerance this reuses: 1e-6 relative, fp32 rounding
of differently shaped GEMMs and reduction orders; a wrong shard, a gate paired with the wrong up
rows or a qk-norm gradient not summed over TP is O(1)).

Each rank builds the TP layer and, alone, the TP1 twin from the same seed and flags; both get the
same input and output-gradient. Compared: the initial weights (the twin's, sharded), the forward
output, the input-gradient and every weight-gradient (the twin's, sharded the same way).
"""

from argparse import Namespace

import torch

import check_parallel_layers as twins
from goldtron.model.transformer import MLP, SelfAttention
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tp_slicing import shard_blocks

SINGLE = ParallelState(world_size=1, rank=0, tp_size=1, pp_size=1, dp_size=1, device=torch.device("cpu"),
                       backend="gloo")
H, HEADS, FFN = 32, 4, 64


def layer_args(**changes) -> Namespace:
    # A large init std so the SiLU gate and the softmax are far from linear.
    args = dict(hidden_size=H, num_attention_heads=HEADS, kv_channels=H // HEADS, ffn_hidden_size=FFN,
                params_dtype=torch.float32, init_method_std=0.2, num_layers=2, seed=11, attention_dropout=0.0,
                attention_softmax_in_fp32=False, swiglu=False, add_bias_linear=True,
                position_embedding_type="learned_absolute", rotary_dim=None, rotary_base=10000, rotary_interleaved=False,
                recompute_granularity=None, num_query_groups=HEADS, qk_layernorm=False,
                apply_query_key_layer_scaling=False, normalization="LayerNorm", norm_epsilon=1e-5,
                sequence_parallel=False)
    args.update(changes)
    return Namespace(**args)


def _shard_like(param: torch.nn.Parameter, full: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """This rank's part of the twin's `full` tensor, placed as `param` is (by its TP attributes)."""
    if param.tensor_parallel_dim is None:
        return full
    return shard_blocks(full, param.tensor_parallel_dim, ps.tp_rank, ps.tp_size, param.tensor_parallel_blocks)


def compare(name: str, build, ps: ParallelState, random_biases: bool) -> None:
    parallel, twin = build(ps), build(SINGLE)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (pname, p), (_, t) in zip(parallel.named_parameters(), twin.named_parameters(), strict=True):
            twins.close(f"{name} init {pname}", p, _shard_like(p, t, ps))
            if random_biases and pname.endswith("bias"):  # zero-initialised: give them values to be wrong with
                t.copy_(torch.randn(t.shape, generator=g))
                p.copy_(_shard_like(p, t, ps))
    x = torch.randn(2, 7, H, generator=g)
    dy = torch.randn(2, 7, H, generator=g)
    xp, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yp, yt = parallel(xp), twin(xt)
    yp.backward(dy)
    yt.backward(dy)
    twins.close(f"{name} forward", yp, yt)
    twins.close(f"{name} dx", xp.grad, xt.grad)
    for (pname, p), (_, t) in zip(parallel.named_parameters(), twin.named_parameters(), strict=True):
        twins.close(f"{name} d{pname}", p.grad, _shard_like(p, t.grad, ps))


def check(tp: int) -> None:
    ps = ParallelState.create(tp, 1, torch.device("cpu"), "gloo")
    rng = DropoutRNG(11, 0, 0, torch.device("cpu"))
    prefix = "decoder.layers.0"
    for bias in (True, False):
        swiglu = layer_args(swiglu=True, add_bias_linear=bias)
        compare(f"tp{tp} swiglu mlp bias={bias}", lambda s, a=swiglu: MLP(a, s, f"{prefix}.mlp"), ps, bias)
    no_bias_gelu = layer_args(add_bias_linear=False)
    compare(f"tp{tp} gelu mlp no bias", lambda s: MLP(no_bias_gelu, s, f"{prefix}.mlp"), ps, False)
    rope_no_bias = layer_args(add_bias_linear=False, position_embedding_type="rope", rotary_dim=4)
    compare(f"tp{tp} rope attention no bias",
            lambda s: SelfAttention(rope_no_bias, s, f"{prefix}.self_attention", rng, 1), ps, False)
    # Grouped-query attention with qk-layernorm: each rank holds whole query groups (8 heads, 4 groups:
    # two groups a rank at TP2, one at TP4), and the qk-norm weights' gradients are summed over TP.
    for normalization in ("LayerNorm", "RMSNorm"):
        gqa = layer_args(num_attention_heads=8, kv_channels=4, num_query_groups=4, qk_layernorm=True,
                         normalization=normalization, position_embedding_type="rope", rotary_dim=4)
        compare(f"tp{tp} gqa qk-{normalization} attention",
                lambda s, a=gqa: SelfAttention(a, s, f"{prefix}.self_attention", rng, 1), ps, True)
    # The flags really change the layers (so the comparisons above are of the new code paths).
    mlp = MLP(layer_args(swiglu=True, add_bias_linear=False), ps, f"{prefix}.mlp")
    if mlp.linear_fc1.weight.shape != (2 * FFN // tp, H) or mlp.linear_fc1.bias is not None:
        twins.failures.append(f"tp{tp} swiglu fc1: local shape {tuple(mlp.linear_fc1.weight.shape)}, "
                              f"bias {mlp.linear_fc1.bias is not None}")
    if any(name.endswith("bias") for name, _ in SelfAttention(rope_no_bias, ps, "a", rng, 1).named_parameters()):
        twins.failures.append(f"tp{tp} attention under --disable-bias-linear still has a bias")


if __name__ == "__main__":
    twins.run_on_every_rank(check, "all architecture layers match their single-process twins")
