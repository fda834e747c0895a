"""Megatron flags goldtron knows but does not implement as Megatron does.

Two tables, the one place these decisions live (docs/flags.md is rendered from them):

- NO_EFFECT_FLAGS: accepted and ignored, because on goldtron they cannot change what is
  computed (a kernel or I/O choice, or a behaviour that is always on here). Each has its reason.
- UNIMPLEMENTED_FLAGS: Megatron features goldtron does not have. Passing one is a ConfigError
  naming it, so a test case never silently runs something other than what it asked for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoEffectFlag:
    flag: str
    reason: str
    # None: a bare switch. Otherwise the flag takes one value of this type (and choices).
    value_type: type | None = None
    choices: tuple[str, ...] | None = None


NO_EFFECT_FLAGS: tuple[NoEffectFlag, ...] = (
    NoEffectFlag(
        "--expert-tensor-parallel-size",
        "the tensor parallelism of expert layers; a dense model has none (--num-experts, mixture of experts, "
        "is not implemented and refused), so it changes nothing, as in Megatron's dense runs.",
        value_type=int,
    ),
    NoEffectFlag(
        "--use-mcore-models",
        "goldtron has one GPT implementation, written to Megatron-Core's semantics; there is no legacy model to choose.",
    ),
    NoEffectFlag(
        "--use-cpu-initialization",
        "always on: every full weight is made from the seed and then sharded, so weights do not depend on TP/PP.",
    ),
    NoEffectFlag(
        "--use-persistent-ckpt-worker",
        "selects Megatron's async-save worker process; goldtron's --async-save has its own background writer.",
    ),
    NoEffectFlag(
        "--num-workers",
        "DataLoader worker processes; goldtron builds batches in the training process (same samples either way).",
        value_type=int,
    ),
    NoEffectFlag(
        "--no-masked-softmax-fusion",
        "goldtron has no fused masked-softmax kernel; attention always uses plain PyTorch ops.",
    ),
    NoEffectFlag(
        "--no-bias-gelu-fusion",
        "goldtron has no fused bias+GeLU kernel; bias add and GeLU are always separate ops.",
    ),
    NoEffectFlag(
        "--no-bias-dropout-fusion",
        "goldtron has no fused bias+dropout+add kernel; the ops are always separate.",
    ),
    NoEffectFlag(
        "--no-gradient-accumulation-fusion",
        "goldtron has no fused wgrad-into-main-grad kernel; gradients are always accumulated in fp32 by autograd.",
    ),
    NoEffectFlag(
        "--no-persist-layer-norm",
        "goldtron has no persistent LayerNorm kernel; LayerNorm is torch.nn.functional.layer_norm.",
    ),
    NoEffectFlag(
        "--no-async-tensor-model-parallel-allreduce",
        "goldtron's tensor-parallel all-reduces are synchronous; there is nothing to turn off.",
    ),
    NoEffectFlag(
        "--accumulate-allreduce-grads-in-fp32",
        "always on: gradients are kept and all-reduced in fp32 (also with --bf16).",
    ),
    NoEffectFlag(
        "--attention-backend",
        "chooses Megatron's attention kernel (flash, fused, unfused...); goldtron has one attention in plain "
        "PyTorch ops, so results match Megatron's kernels to rounding, not bit for bit.",
        value_type=str,
        choices=("flash", "fused", "unfused", "local", "auto"),
    ),
    NoEffectFlag(
        "--no-mmap-bin-files",
        "how the .bin token file is read (mmap or not); the tokens and samples are the same either way.",
    ),
    NoEffectFlag(
        "--ckpt-fully-parallel-save",
        "how Megatron spreads the writing of replicated tensors; each goldtron rank writes its own shards, same checkpoint content.",
    ),
    NoEffectFlag(
        "--no-ckpt-fully-parallel-save",
        "see --ckpt-fully-parallel-save: a write-scheduling choice, same checkpoint content.",
    ),
    NoEffectFlag(
        "--ckpt-fully-parallel-load",
        "how Megatron spreads the reading of replicated tensors; loading gives the same tensors either way.",
    ),
    NoEffectFlag(
        "--ckpt-assume-constant-structure",
        "a Megatron save-plan caching optimisation; the checkpoint written is the same.",
    ),
    NoEffectFlag(
        "--dist-ckpt-optim-fully-reshardable",
        "always true here: goldtron's optimizer state (also --use-distributed-optimizer's) is saved per parameter "
        "with global shapes, so it reshards to any TP/PP/DP.",
    ),
    NoEffectFlag(
        "--empty-unused-memory-level",
        "frees the CUDA caching allocator between phases; no effect on results (and none on CPU).",
        value_type=int,
    ),
    NoEffectFlag(
        "--no-create-attention-mask-in-dataloader",
        "goldtron's data loader never builds an attention mask: the model applies the causal mask itself "
        "(what Megatron does with this flag), so there is nothing to turn off.",
    ),
    NoEffectFlag(
        "--manual-gc",
        "when Python's garbage collector runs (Megatron turns automatic collection off and collects every "
        "--manual-gc-interval steps, for speed); it frees nothing the step uses, so no value changes. goldtron "
        "leaves the collector automatic.",
    ),
    NoEffectFlag(
        "--manual-gc-interval",
        "see --manual-gc: the interval of those collections.",
        value_type=int,
    ),
    NoEffectFlag(
        "--no-rope-fusion",
        "goldtron has no fused RoPE kernel; the rotation is always plain PyTorch ops (model/rotary.py).",
    ),
    NoEffectFlag(
        "--cross-entropy-loss-fusion",
        "asks for Megatron's fused vocab-parallel cross-entropy kernel; goldtron has one cross-entropy "
        "(parallel/cross_entropy.py) computing the same loss, equal to the fused kernel's to rounding.",
    ),
    NoEffectFlag(
        "--no-log-loss-scale-to-tensorboard",
        "goldtron has no loss scale (fp16 is not implemented), so there is nothing to log.",
    ),
)


# Megatron flag -> what it does there. Passing any of these is a ConfigError.
UNIMPLEMENTED_FLAGS: dict[str, str] = {
    "--expert-model-parallel-size": "mixture of experts",
    "--num-experts": "mixture of experts",
    "--recompute-modules": "selective recomputation of modules other than core attention (core_attn, "
                           "Megatron's default, is what --recompute-granularity selective recomputes)",
    "--distribute-saved-activations": "recomputation checkpoints split over the TP ranks",
    "--tp-comm-overlap": "Transformer Engine tensor-parallel communication overlap",
    "--squared-relu": "squared-ReLU MLP",
    "--apply-layernorm-1p": "LayerNorm with (1 + weight)",
    "--eod-mask-loss": "masking the loss at end-of-document tokens",
    "--reset-position-ids": "position ids restarting at each document",
    "--reset-attention-mask": "attention masked across documents",
    "--lr-warmup-init": "non-zero LR at the start of warmup",
    "--start-weight-decay": "weight-decay schedule",
    "--end-weight-decay": "weight-decay schedule",
    "--weight-decay-incr-style": "weight-decay schedule",
    "--rampup-batch-size": "batch-size ramp-up",
    "--loss-scale": "fp16 loss scaling",
    "--initial-loss-scale": "fp16 loss scaling",
    "--fp8-format": "FP8 training",
    "--use-flash-attn": "flash attention kernels",
    "--check-for-nan-in-loss-and-grad": "NaN checks inside Megatron's gradient buffers",
    "--no-check-for-nan-in-loss-and-grad": "NaN checks inside Megatron's gradient buffers (goldtron has none to "
                                           "turn off)",
    "--grad-reduce-in-bf16": "gradients accumulated and reduced in bf16 (goldtron keeps and reduces them in fp32)",
    "--overlap-param-gather-with-optimizer-step": "the first bucket's parameter all-gather overlapped with the "
                                                  "optimizer step (Megatron: interleaved schedule only, and not "
                                                  "with distributed checkpoints, goldtron's only format)",
    "--use-torch-fsdp2": "PyTorch FSDP2 sharding of parameters, gradients and optimizer state",
    "--use-megatron-fsdp": "Megatron's own FSDP",
    "--ddp-reduce-scatter-with-fp32-accumulation": "reduce-scatter accumulating in fp32 from lower-precision "
                                                   "gradients (goldtron's gradients are fp32 already)",
    "--wandb-project": "Weights & Biases logging",
    "--wandb-exp-name": "Weights & Biases logging",
    "--wandb-save-dir": "Weights & Biases logging",
}

# Whole Megatron feature families, matched by prefix.
UNIMPLEMENTED_PREFIXES: dict[str, str] = {
    "--moe-": "mixture of experts",
    "--fp8": "FP8 training",
    "--tp-comm-": "Transformer Engine tensor-parallel communication overlap",
    "--wandb-": "Weights & Biases logging",
}


def describe_unimplemented(flag: str) -> str | None:
    """What a known-but-unimplemented Megatron flag does, or None if it is not one."""
    if flag in UNIMPLEMENTED_FLAGS:
        return UNIMPLEMENTED_FLAGS[flag]
    for prefix, feature in UNIMPLEMENTED_PREFIXES.items():
        if flag.startswith(prefix):
            return feature
    return None
