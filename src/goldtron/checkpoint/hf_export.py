"""`goldtron ckpt export DIR --to hf OUTDIR`: a Hugging Face GPT-2 folder (config.json +
pytorch_model.bin) that `transformers.GPT2LMHeadModel.from_pretrained(OUTDIR)` loads.

goldtron's GPT is GPT-2's architecture (learned absolute positions, pre-LN blocks, causal
attention with biases, final LN, exact GeLU), so the export is a renaming plus two layout changes:
GPT-2's linears are `Conv1D` ([in, out], the transpose of `nn.Linear`), and its fused `c_attn`
holds [q | k | v] blocks where goldtron's `linear_qkv` is head-major (q, k, v of head 0, then
head 1, ...; see `model/qkv_layout.py`).

Refused, because GPT-2 has no place for them: rotary position embeddings, the SwiGLU MLP, RMSNorm,
grouped-query attention (fewer key/value heads than query heads) and --qk-layernorm (`--to torch`
exports those checkpoints). A model trained with --apply-query-key-layer-scaling exports as it is:
the scaling is undone inside its softmax, so GPT-2's plain 1/sqrt(d) computes the same up to
rounding. A model trained with `--disable-bias-linear` is exported with zero biases in GPT-2's
linears, which computes the same.

The weights go in `pytorch_model.bin` (torch.save) rather than model.safetensors so that export
needs nothing beyond torch; transformers reads both.
"""

from __future__ import annotations

import json
import os
from argparse import Namespace

import torch

from goldtron.checkpoint.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"

# Biases that --disable-bias-linear leaves out; GPT-2 always has them, so they are exported as zeros.
_LINEAR_BIASES = ("self_attention.linear_qkv.bias", "self_attention.linear_proj.bias", "mlp.linear_fc1.bias",
                  "mlp.linear_fc2.bias")

# goldtron layer-parameter suffix -> (GPT-2 suffix, is a linear weight that GPT-2 stores transposed)
_LAYER_RENAMES = {
    "input_layernorm.weight": ("ln_1.weight", False),
    "input_layernorm.bias": ("ln_1.bias", False),
    "self_attention.linear_proj.weight": ("attn.c_proj.weight", True),
    "self_attention.linear_proj.bias": ("attn.c_proj.bias", False),
    "pre_mlp_layernorm.weight": ("ln_2.weight", False),
    "pre_mlp_layernorm.bias": ("ln_2.bias", False),
    "mlp.linear_fc1.weight": ("mlp.c_fc.weight", True),
    "mlp.linear_fc1.bias": ("mlp.c_fc.bias", False),
    "mlp.linear_fc2.weight": ("mlp.c_proj.weight", True),
    "mlp.linear_fc2.bias": ("mlp.c_proj.bias", False),
}


def _saved_args(common: dict) -> Namespace:
    args = common.get("args")
    if not args:
        raise CheckpointError("the checkpoint holds no run arguments (common.json 'args'); the model shape is unknown")
    return Namespace(**args)


def _check_expressible(args: Namespace) -> None:
    """Refuse what GPT-2 cannot represent instead of writing a model that computes something else."""
    problems = []
    if getattr(args, "normalization", "LayerNorm") != "LayerNorm":
        problems.append(f"normalization {args.normalization} (GPT-2 has LayerNorm)")
    if getattr(args, "position_embedding_type", "learned_absolute") != "learned_absolute":
        problems.append(f"position embedding {args.position_embedding_type} (GPT-2 learns absolute positions; "
                        "it has no rotary embeddings)")
    if getattr(args, "swiglu", False):
        problems.append("--swiglu (GPT-2's MLP is fc2(gelu(fc1 x)); it has no gated SwiGLU MLP)")
    groups = getattr(args, "num_query_groups", args.num_attention_heads)
    if groups != args.num_attention_heads:
        problems.append(f"--group-query-attention with --num-query-groups {groups} (GPT-2 has a key and a value "
                        f"head per query head, {args.num_attention_heads} here; it cannot share them)")
    if getattr(args, "qk_layernorm", False):
        problems.append("--qk-layernorm (GPT-2 has no norm on queries and keys)")
    if args.kv_channels * args.num_attention_heads != args.hidden_size:
        problems.append(f"kv_channels {args.kv_channels} x {args.num_attention_heads} heads != hidden "
                        f"{args.hidden_size} (GPT-2's head size is hidden / heads)")
    if problems:
        raise CheckpointError("cannot export as Hugging Face GPT-2: " + "; ".join(problems)
                              + ". `goldtron ckpt export DIR --to torch FILE` exports any goldtron checkpoint.")


def gpt2_config(args: Namespace) -> dict:
    """config.json for GPT2LMHeadModel from the saved run arguments."""
    dtype = str(args.params_dtype).replace("torch.", "")
    # goldtron's tokenizers (GPT-2 BPE, NullTokenizer) put the end-of-document id last.
    eod = args.real_vocab_size - 1
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": args.real_vocab_size,  # the checkpoint holds the real rows only
        "n_positions": args.max_position_embeddings,
        "n_embd": args.hidden_size,
        "n_layer": args.num_layers,
        "n_head": args.num_attention_heads,
        "n_inner": args.ffn_hidden_size,
        "activation_function": "gelu",  # exact erf GeLU (F.gelu), not GPT-2's tanh "gelu_new"
        "layer_norm_epsilon": args.layernorm_epsilon,
        "resid_pdrop": args.hidden_dropout,
        "embd_pdrop": args.hidden_dropout,
        "attn_pdrop": args.attention_dropout,
        "initializer_range": args.init_method_std,
        "scale_attn_weights": True,  # 1/sqrt(head_dim), as goldtron
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": not args.untie_embeddings_and_output_weights,
        "bos_token_id": eod,
        "eos_token_id": eod,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def head_major_qkv_to_gpt2(weight_or_bias: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[heads*3*d, ...] (q, k, v per head) -> [3*heads*d, ...] ([all q | all k | all v])."""
    rest = weight_or_bias.shape[1:]
    return weight_or_bias.reshape(heads, 3, head_dim, *rest).transpose(0, 1).reshape(3 * heads * head_dim, *rest)


def gpt2_state_dict(model: dict[str, torch.Tensor], args: Namespace) -> dict[str, torch.Tensor]:
    """goldtron parameter names and layouts -> GPT2LMHeadModel's. Every model tensor must be used."""
    heads, d = args.num_attention_heads, args.kv_channels
    unused = set(model)

    biases_left_out = not getattr(args, "add_bias_linear", True)

    def take(name: str) -> torch.Tensor:
        if name not in model and biases_left_out and name.endswith(_LINEAR_BIASES):
            # GPT-2's Conv1D always adds a bias; a zero one computes what the bias-free linear did.
            weight = model[name.removesuffix("bias") + "weight"]
            return torch.zeros(weight.shape[0], dtype=weight.dtype)
        if name not in model:
            raise CheckpointError(f"the checkpoint lacks {name}, which the GPT-2 export needs")
        unused.discard(name)
        return model[name]

    out = {
        "transformer.wte.weight": take("embedding.word_embeddings.weight"),
        "transformer.wpe.weight": take("embedding.position_embeddings.weight"),
        "transformer.ln_f.weight": take("decoder.final_layernorm.weight"),
        "transformer.ln_f.bias": take("decoder.final_layernorm.bias"),
    }
    for i in range(args.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        qkv_weight = head_major_qkv_to_gpt2(take(src + "self_attention.linear_qkv.weight"), heads, d)
        out[dst + "attn.c_attn.weight"] = qkv_weight.t()  # Conv1D: [in, out]
        out[dst + "attn.c_attn.bias"] = head_major_qkv_to_gpt2(take(src + "self_attention.linear_qkv.bias"), heads, d)
        for suffix, (gpt2_suffix, transpose) in _LAYER_RENAMES.items():
            tensor = take(src + suffix)
            out[dst + gpt2_suffix] = tensor.t() if transpose else tensor
    if args.untie_embeddings_and_output_weights:
        # Untied: the LM head is its own weight, exported as lm_head.weight (tie_word_embeddings false).
        out["lm_head.weight"] = take("output_layer.weight")
    if unused:
        raise CheckpointError(f"the GPT-2 export has no place for {sorted(unused)}")
    # torch.save keeps views' storages: contiguous copies store only what each tensor holds.
    return {k: v.contiguous().clone() for k, v in out.items()}


def write_hf_folder(model: dict[str, torch.Tensor], common: dict, out_dir: str) -> None:
    args = _saved_args(common)
    _check_expressible(args)
    state = gpt2_state_dict(model, args)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump(gpt2_config(args), f, indent=2)
        f.write("\n")
    torch.save(state, os.path.join(out_dir, WEIGHTS_NAME))
