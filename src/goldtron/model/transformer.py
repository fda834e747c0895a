"""One pre-LayerNorm GPT block: causal self-attention and a GeLU (or SwiGLU) MLP, tensor-parallel.

Options (Megatron's flags): `--position-embedding-type rope` rotates q and k (model/rotary.py);
`--swiglu` gates the MLP; `--disable-bias-linear` drops the biases of the four linears;
`--group-query-attention --num-query-groups G` shares each key/value head among heads/G query heads
(model/qkv_layout.py); `--qk-layernorm` normalizes each head's queries and keys;
`--apply-query-key-layer-scaling` (model/qk_scaling.py); `--normalization RMSNorm` (model/layer_norm.py);
`--context-parallel-size` > 1: this rank's two chunks of the sequence, attention by --cp-comm-type
(parallel/context_attention.py) and RoPE at the chunks' positions.

Parameter names follow Megatron-Core's GPT (`self_attention.linear_qkv`, `mlp.linear_fc1`, ...)
so checkpoints and logs read the same. Activations are [batch, seq, hidden].
"""

from __future__ import annotations

from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import nn

from goldtron.model import recompute
from goldtron.model.init import normal_full, output_projection_std
from goldtron.model.layer_norm import make_norm
from goldtron.model.qk_scaling import QueryKeyScaling
from goldtron.model.qkv_layout import expand_key_value, qkv_full_weight, qkv_rows, split_qkv
from goldtron.model.rotary import RotaryEmbedding
from goldtron.parallel.context_attention import ContextParallelAttention
from goldtron.parallel.context_parallel import rank_positions
from goldtron.parallel.random import DropoutRNG, dropout, hidden_dropout_generator
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear


def _zero_bias(args: Namespace, size: int) -> torch.Tensor | None:
    """A linear's initial bias, or None under --disable-bias-linear."""
    return torch.zeros(size) if args.add_bias_linear else None


class SelfAttention(nn.Module):
    """Causal self-attention; `layer_number` is the layer's global index + 1 (Megatron's, for
    --apply-query-key-layer-scaling). The fused QKV layout with query groups: model/qkv_layout.py."""

    def __init__(self, args: Namespace, ps: ParallelState, prefix: str, rng: DropoutRNG, layer_number: int):
        super().__init__()
        h, d = args.hidden_size, args.kv_channels
        self.local_heads = args.num_attention_heads // ps.tp_size
        self.local_groups = args.num_query_groups // ps.tp_size
        self.heads_per_group = args.num_attention_heads // args.num_query_groups
        self.head_dim = d
        self.attention_dropout = args.attention_dropout
        self.softmax_in_fp32 = args.attention_softmax_in_fp32
        self.scaling = QueryKeyScaling(d, layer_number if args.apply_query_key_layer_scaling else None)
        self.rng = rng
        self.run_core_attention = recompute.CoreAttentionRunner(args.recompute_granularity == "selective", rng)
        dtype = args.params_dtype
        proj_std = output_projection_std(args.init_method_std, args.num_layers)
        sp = args.sequence_parallel
        self.linear_qkv = ColumnParallelLinear(
            qkv_full_weight(args, f"{prefix}.linear_qkv.weight"), _zero_bias(args, qkv_rows(args)), ps, dtype,
            sequence_parallel=sp,
        )
        self.linear_proj = RowParallelLinear(
            normal_full(args.seed, f"{prefix}.linear_proj.weight", (h, args.num_attention_heads * d), proj_std),
            _zero_bias(args, h), ps, dtype, sequence_parallel=sp,
        )
        self.q_layernorm = self.k_layernorm = None
        if args.qk_layernorm:  # over each head's d channels, one weight for all heads (Megatron-Core's)
            self.q_layernorm = make_norm(args, d, ps.device, partial_over_tp=ps)
            self.k_layernorm = make_norm(args, d, ps.device, partial_over_tp=ps)
        self.context_parallel = positions = None
        if ps.cp_size > 1:
            positions = rank_positions(args.seq_length, ps.cp_size, ps.cp_rank).to(ps.device)
            self.context_parallel = ContextParallelAttention(
                layer_comm_type(args, layer_number), ps, args.seq_length, self.heads_per_group,
                self.scaling.score_scale * (self.scaling.layer_number or 1))
        self.rotary = None
        if args.position_embedding_type == "rope":
            self.rotary = RotaryEmbedding(args.rotary_dim, args.rotary_base, args.rotary_interleaved, positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.linear_qkv(x)  # the whole sequence, also when x is a sequence-parallel part
        b, s, _ = qkv.shape
        q, k, v = split_qkv(qkv, self.local_groups, self.heads_per_group, self.head_dim)
        if self.q_layernorm is not None:  # before RoPE, as Megatron-Core
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if self.context_parallel is not None:  # validation refused attention dropout here
            context = self.run_core_attention(self.context_parallel, q, k, v, self.training)
        elif self.training and self.attention_dropout > 0 or self.scaling.layer_number is not None:
            context = self.run_core_attention(self._attention_with_dropout, q, k, v, self.training)
        else:
            # Fused kernel: the same math (scaled, causal, softmax in fp32 internally).
            context = self.run_core_attention(self._fused_attention, q, k, v, self.training)
        context = context.transpose(1, 2).reshape(b, s, self.local_heads * self.head_dim)
        return self.linear_proj(context)

    def _fused_attention(self, q, k, v):
        k, v = expand_key_value(k, v, self.heads_per_group)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def _attention_with_dropout(self, q, k, v):
        """The unfused core attention: for dropout on the probabilities, and for the layer-scaled
        softmax (which the fused kernel cannot undo in fp32)."""
        k, v = expand_key_value(k, v, self.heads_per_group)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling.score_scale
        s = q.shape[-2]
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).triu_(1)
        probs = self.scaling.softmax(scores, causal, self.softmax_in_fp32).to(v.dtype)
        # Inside the TP region: each rank drops its own heads with its own stream.
        probs = dropout(probs, self.attention_dropout, self.rng.tensor_parallel, self.training)
        return torch.matmul(probs, v)


def layer_comm_type(args: Namespace, layer_number: int) -> str:
    """--cp-comm-type: one value for every layer, or one per layer (Megatron's list form)."""
    types = args.cp_comm_type
    return types[0] if len(types) == 1 else types[layer_number - 1]


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
            sequence_parallel=args.sequence_parallel,
        )
        self.linear_fc2 = RowParallelLinear(
            normal_full(args.seed, f"{prefix}.linear_fc2.weight", (h, f),
                        output_projection_std(args.init_method_std, args.num_layers)),
            _zero_bias(args, h), ps, dtype, sequence_parallel=args.sequence_parallel,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_fc1(x)
        if self.gated:
            gate, up = hidden.chunk(2, dim=-1)
            return self.linear_fc2(F.silu(gate) * up)
        return self.linear_fc2(F.gelu(hidden))


class TransformerLayer(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, prefix: str, rng: DropoutRNG, layer_number: int):
        super().__init__()
        self.hidden_dropout = args.hidden_dropout
        # Residual-stream dropout: on TP-replicated activations the shared stream, on a
        # sequence-parallel part this rank's own (parallel/random.py).
        self.hidden_rng = hidden_dropout_generator(rng, args.sequence_parallel)
        self.input_layernorm = make_norm(args, args.hidden_size, ps.device, on_sequence_part=True)
        self.self_attention = SelfAttention(args, ps, f"{prefix}.self_attention", rng, layer_number)
        self.pre_mlp_layernorm = make_norm(args, args.hidden_size, ps.device, on_sequence_part=True)
        self.mlp = MLP(args, ps, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [b, s, h], or this rank's [b, s/TP, h] under --sequence-parallel (the same out)."""
        attn = self.self_attention(self.input_layernorm(x))
        x = x + dropout(attn, self.hidden_dropout, self.hidden_rng, self.training)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        return x + dropout(mlp, self.hidden_dropout, self.hidden_rng, self.training)
