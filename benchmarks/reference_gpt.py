"""A minimal plain-PyTorch GPT (nanoGPT-style), the reference goldtron's step time is measured against.

Why our own and not transformers' GPT2LMHeadModel: transformers is not installed on this machine
and must not be added. This model has goldtron's architecture and nothing else: learned absolute
positions, pre-LayerNorm blocks, causal attention through F.scaled_dot_product_attention, a GeLU
MLP of 4h, a final LayerNorm, an LM head tied to the word embedding, and plain F.cross_entropy.
No tensor/pipeline parallelism, no vocabulary padding, no deferred weight-gradients.

`load_goldtron_weights` copies a one-process goldtron model's weights in, so the two can be
checked to compute the same loss before they are timed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)  # rows: all q, then all k, then all v
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=2)
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, s, h))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn_hidden: int, dropout: float, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, ffn_hidden)
        self.fc2 = nn.Linear(ffn_hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ln_2(x)))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, max_positions: int, hidden: int, heads: int, layers: int,
                 ffn_hidden: int | None = None, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(max_positions, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn_hidden or 4 * hidden, dropout, eps) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden, eps=eps)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all tokens of the batch."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def build_optimizer(model: ReferenceGPT, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float) -> torch.optim.AdamW:
    """nanoGPT's grouping, which is also Megatron's: decay matrices and embeddings, not biases/norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)


@torch.no_grad()
def load_goldtron_weights(reference: ReferenceGPT, goldtron_model, heads: int) -> None:
    """Copy a one-process goldtron GPTStage (TP1, PP1, tied) into `reference`.

    goldtron keeps the QKV weight head-major, [heads * 3 * d, h] (q, k, v of head 0, then head 1,
    ...), so a TP split hands each rank whole heads; nanoGPT keeps [3 * h, h] (all q, all k, all
    v). The word embedding is padded in goldtron; only its real rows are copied.
    """
    first_layer = next(iter(goldtron_model.decoder.layers.values()))
    if (goldtron_model.embedding.position_embeddings is None or first_layer.mlp.gated
            or first_layer.mlp.linear_fc1.bias is None):
        raise ValueError("the reference GPT has goldtron's default architecture only (learned positions, GeLU MLP, "
                         "biases); a model built with --position-embedding-type rope, --swiglu or "
                         "--disable-bias-linear cannot be loaded into it")
    vocab = reference.wte.weight.shape[0]
    reference.wte.weight.copy_(goldtron_model.embedding.word_embeddings.weight[:vocab])
    reference.wpe.weight.copy_(goldtron_model.embedding.position_embeddings.weight)

    def qkv_to_blocked(t: torch.Tensor) -> torch.Tensor:
        head_major = t.view(heads, 3, -1, *t.shape[1:])  # [heads, 3, d, (h)]
        return head_major.transpose(0, 1).reshape(t.shape)  # [3, heads, d, (h)] -> [3h, (h)]

    def copy_layer_norm(ours: nn.LayerNorm, theirs) -> None:
        ours.weight.copy_(theirs.weight)
        ours.bias.copy_(theirs.bias)

    for block, layer in zip(reference.blocks, goldtron_model.decoder.layers.values(), strict=True):
        attention, mlp = layer.self_attention, layer.mlp
        copy_layer_norm(block.ln_1, layer.input_layernorm)
        block.attn.qkv.weight.copy_(qkv_to_blocked(attention.linear_qkv.weight))
        block.attn.qkv.bias.copy_(qkv_to_blocked(attention.linear_qkv.bias))
        block.attn.proj.weight.copy_(attention.linear_proj.weight)
        block.attn.proj.bias.copy_(attention.linear_proj.bias)
        copy_layer_norm(block.ln_2, layer.pre_mlp_layernorm)
        block.fc1.weight.copy_(mlp.linear_fc1.weight)
        block.fc1.bias.copy_(mlp.linear_fc1.bias)
        block.fc2.weight.copy_(mlp.linear_fc2.weight)
        block.fc2.bias.copy_(mlp.linear_fc2.bias)
    copy_layer_norm(reference.ln_f, goldtron_model.decoder.final_layernorm)
