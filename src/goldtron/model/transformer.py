"""One pre-LayerNorm GPT block: causal self-attention and a GeLU (or SwiGLU) MLP, tensor-parallel.

Options (Megatron's flags): `--position-embedding-type rope` rotates q and k (model/rotary.py);
`--swiglu` gates the MLP; `--disable-bias-linear` drops the biases of the four linears.

Parameter names follow Megatron-Core's GPT (`self_attention.linear_qkv`, `mlp.linear_fc1`, ...)
so checkpoints and logs read the same. Activations are [batch, seq, hidden].
"""

from __future__ import annotations

import math
from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import nn

from goldtron.model import recompute
from goldtron.model.init import normal_full, output_projection_std
from goldtron.model.layer_norm import LayerNorm
from goldtron.model.rotary import RotaryEmbedding
from goldtron.parallel.random import DropoutRNG, dropout
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear


def _qkv_full_weight(args: Namespace, name: str) -> torch.Tensor:
    """Full [3*h, h] QKV weight in head-major order (q, k, v of head 0, then head 1, ...), so
    that a contiguous split over TP hands each rank whole heads with their q, k and v."""
    h, heads, d = args.hidden_size, args.num_attention_heads, args.kv_channels
    q, k, v = (normal_full(args.seed, f"{name}.{part}", (heads * d, h), args.init_method_std) for part in "qkv")
    stacked = torch.stack([q, k, v]).view(3, heads, d, h)
    return stacked.transpose(0, 1).reshape(heads * 3 * d, h)


def _zero_bias(args: Namespace, size: int) -> torch.Tensor | None:
    """A linear's initial bias, or None under --disable-bias-linear."""
    return torch.zeros(size) if args.add_bias_linear else None


class SelfAttention(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, prefix: str, rng: DropoutRNG):
        super().__init__()
        h, d = args.hidden_size, args.kv_channels
        self.local_heads = args.num_attention_heads // ps.tp_size
        self.head_dim = d
        self.attention_dropout = args.attention_dropout
        self.softmax_in_fp32 = args.attention_softmax_in_fp32
        self.rng = rng
        self.run_core_attention = recompute.CoreAttentionRunner(args.recompute_granularity == "selective", rng)
        dtype = args.params_dtype
        proj_std = output_projection_std(args.init_method_std, args.num_layers)
        self.linear_qkv = ColumnParallelLinear(
            _qkv_full_weight(args, f"{prefix}.linear_qkv.weight"), _zero_bias(args, 3 * args.num_attention_heads * d),
            ps, dtype,
        )
        self.linear_proj = RowParallelLinear(
            normal_full(args.seed, f"{prefix}.linear_proj.weight", (h, args.num_attention_heads * d), proj_std),
            _zero_bias(args, h), ps, dtype,
        )
        self.rotary = None
        if args.position_embedding_type == "rope":
            self.rotary = RotaryEmbedding(args.rotary_dim, args.rotary_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.linear_qkv(x).view(b, s, self.local_heads, 3, self.head_dim)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # [b, heads, s, d]
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if self.training and self.attention_dropout > 0:
            context = self.run_core_attention(self._attention_with_dropout, q, k, v, self.training)
        else:
            # Fused kernel: the same math (scaled, causal, softmax in fp32 internally).
            context = self.run_core_attention(_causal_attention, q, k, v, self.training)
        context = context.transpose(1, 2).reshape(b, s, self.local_heads * self.head_dim)
        return self.linear_proj(context)

    def _attention_with_dropout(self, q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        s = q.shape[-2]
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill(causal, float("-inf"))
        probs = torch.softmax(scores.float() if self.softmax_in_fp32 else scores, dim=-1).to(v.dtype)
        # Inside the TP region: each rank drops its own heads with its own stream.
        probs = dropout(probs, self.attention_dropout, self.rng.tensor_parallel, True)
        return torch.matmul(probs, v)


def _causal_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class MLP(nn.Module):
    """fc2(gelu(fc1 x)), or with --swiglu fc2(silu(x W_gate) * (x W_up)).

    SwiGLU's fc1 is one [2f, h] weight, [gate; up], drawn whole from the seed (so both halves are
    the same under any TP) and split over TP block by block: a rank holds [its gate rows; its up
    rows], the pairs it needs to gate its own slice of f. Checkpoints save the [gate; up] tensor
    (see checkpoint/model_state.py, `tensor_parallel_blocks`), so they reshard across TP sizes.
    """

    def __init__(self, args: Namespace, ps: ParallelState, prefix: str):
        super().__init__()
        h, f, dtype = args.hidden_size, args.ffn_hidden_size, args.params_dtype
        self.gated = args.swiglu
        fc1_rows = 2 * f if self.gated else f
        self.linear_fc1 = ColumnParallelLinear(
            normal_full(args.seed, f"{prefix}.linear_fc1.weight", (fc1_rows, h), args.init_method_std),
            _zero_bias(args, fc1_rows), ps, dtype, blocks=2 if self.gated else 1,
        )
        self.linear_fc2 = RowParallelLinear(
            normal_full(args.seed, f"{prefix}.linear_fc2.weight", (h, f),
                        output_projection_std(args.init_method_std, args.num_layers)),
            _zero_bias(args, h), ps, dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_fc1(x)
        if self.gated:
            gate, up = hidden.chunk(2, dim=-1)
            return self.linear_fc2(F.silu(gate) * up)
        return self.linear_fc2(F.gelu(hidden))


class TransformerLayer(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, prefix: str, rng: DropoutRNG):
        super().__init__()
        self.hidden_dropout = args.hidden_dropout
        self.rng = rng
        self.input_layernorm = LayerNorm(args.hidden_size, args.layernorm_epsilon, ps.device)
        self.self_attention = SelfAttention(args, ps, f"{prefix}.self_attention", rng)
        self.pre_mlp_layernorm = LayerNorm(args.hidden_size, args.layernorm_epsilon, ps.device)
        self.mlp = MLP(args, ps, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual-stream dropout acts on TP-replicated activations: the shared stream.
        attn = self.self_attention(self.input_layernorm(x))
        x = x + dropout(attn, self.hidden_dropout, self.rng.regular, self.training)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        return x + dropout(mlp, self.hidden_dropout, self.rng.regular, self.training)
