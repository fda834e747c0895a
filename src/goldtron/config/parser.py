"""The argparse surface of `goldtron train`: Megatron's flag names, meanings and defaults.

Where Megatron accepts more values than goldtron implements (e.g. --position-embedding-type),
argparse accepts Megatron's full list so that a typo reads as a typo, and validation.py refuses
the values goldtron lacks with a message saying so. Defaults that depend on the machine
(--distributed-backend, --torch-threads) are None here and resolved in validation.py, so the
surface frozen by tests/unit/test_cli_surface.py is the same on every machine.
"""

from __future__ import annotations

import argparse

from goldtron import megatron_defaults
from goldtron.config.errors import ConfigError
from goldtron.config.megatron_flags import NO_EFFECT_FLAGS

PROG = "goldtron train"


class _RaisingArgumentParser(argparse.ArgumentParser):
    """argparse exits the process on bad input; we raise so callers (and tests) decide."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}. See docs/flags.md for the accepted flags.")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: Megatron yaml files spell flags in full, and a prefix like
    # --lr-warmup must not silently mean --lr-warmup-iters.
    parser = _RaisingArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__)
    _add_model_flags(parser.add_argument_group("model"))
    _add_parallel_flags(parser.add_argument_group("parallelism"))
    _add_training_flags(parser.add_argument_group("training"))
    _add_recompute_flags(parser.add_argument_group("activation recomputation"))
    _add_logging_flags(parser.add_argument_group("logging"))
    _add_checkpoint_flags(parser.add_argument_group("checkpointing"))
    _add_data_flags(parser.add_argument_group("data"))
    _add_no_effect_flags(parser.add_argument_group("accepted with no effect (see docs/flags.md)"))
    return parser


def _add_model_flags(g) -> None:
    g.add_argument("--num-layers", type=int, default=None, help="transformer layers (required)")
    g.add_argument("--hidden-size", type=int, default=None, help="model width (required)")
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="MLP width; default 4 x hidden")
    g.add_argument("--num-attention-heads", type=int, default=None, help="attention heads (required)")
    g.add_argument("--kv-channels", type=int, default=None, help="per-head width; default hidden / heads")
    g.add_argument("--seq-length", type=int, default=None, help="tokens per sample (required)")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="rows of the position embedding, >= --seq-length (required)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="vocab is padded to a multiple of this x TP")
    g.add_argument("--vocab-size", type=int, default=None, help="vocab of the NullTokenizer")
    g.add_argument("--hidden-dropout", type=float, default=0.1, help="dropout after attention and MLP")
    g.add_argument("--attention-dropout", type=float, default=0.1, help="dropout on attention probabilities")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                   help="separate output-layer weight instead of the word embedding")
    g.add_argument("--attention-softmax-in-fp32", action="store_true", help="softmax in fp32 under --bf16")
    g.add_argument("--init-method-std", type=float, default=0.02,
                   help="std of normal init; output projections use std / sqrt(2 x layers)")
    g.add_argument("--layernorm-epsilon", type=float, default=1e-5,
                   help="goldtron's name for --norm-epsilon (the two must agree when both are given)")
    g.add_argument("--norm-epsilon", type=float, default=None,
                   help="epsilon of LayerNorm and RMSNorm (Megatron's name); default --layernorm-epsilon, 1e-5")
    g.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"],
                   help="LayerNorm, or RMSNorm: x / sqrt(mean(x^2) + eps) x weight, no bias")
    g.add_argument("--group-query-attention", action="store_true",
                   help="grouped-query attention: --num-query-groups key/value heads, each shared by "
                        "heads / groups query heads")
    g.add_argument("--num-query-groups", type=int, default=1,
                   help="key/value heads with --group-query-attention (1: multi-query); ignored without it, "
                        "as in Megatron")
    g.add_argument("--qk-layernorm", action="store_true",
                   help="normalize each head's queries and keys (over the head's channels, the kind "
                        "--normalization names) before RoPE")
    g.add_argument("--test-mode", action="store_true",
                   help="Megatron's real-time test: with --qk-layernorm, every step checks that the q/k "
                        "layer-norm weights agree bit for bit across the DP and TP groups")
    g.add_argument("--apply-query-key-layer-scaling", action="store_true",
                   help="scale the scores of layer L by 1/L more, multiplied back in the fp32 softmax "
                        "(an fp16 range guard; the same result up to rounding; turns on --attention-softmax-in-fp32)")
    g.add_argument("--position-embedding-type", default="learned_absolute",
                   choices=["learned_absolute", "rope", "mrope", "relative", "none"],
                   help="learned_absolute or rope are implemented")
    g.add_argument("--use-rotary-position-embeddings", action="store_true",
                   help="Megatron's legacy spelling of --position-embedding-type rope")
    g.add_argument("--rotary-percent", type=float, default=1.0,
                   help="fraction of each head's channels that RoPE rotates, in (0, 1]")
    g.add_argument("--rotary-base", type=int, default=10000, help="RoPE frequency base")
    g.add_argument("--rotary-interleaved", action="store_true",
                   help="RoPE pairs channels (2i, 2i+1) instead of (i, i + rotary_dim/2)")
    g.add_argument("--swiglu", action="store_true",
                   help="gated MLP silu(x W_gate) * (x W_up); default --ffn-hidden-size becomes int(8h/3 / 64) x 64")
    # Megatron's dest: the flag turns `add_bias_linear` off.
    g.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear",
                   help="no bias in the QKV, attention-out, fc1 and fc2 linears (LayerNorms keep theirs)")
    g.add_argument("--transformer-impl", default="local", choices=["local", "transformer_engine"],
                   help="only local is implemented (Megatron's default is transformer_engine)")
    g.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 main weights/grads/optimizer")
    g.add_argument("--fp16", action="store_true", help="not implemented")
    g.add_argument("--cuda-graph-impl", default="none", choices=["none", "local", "transformer_engine"],
                   help="CUDA graphs: only none (Megatron's default) is implemented; the others are refused, "
                        "on a CPU because there is no CUDA device to capture graphs on")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron's sequence parallelism: the norms, dropouts and residuals outside the TP GEMMs "
                        "on this TP rank's part of the sequence (docs/sequence_parallel.md; off, with a "
                        "warning, at TP 1)")


def _add_parallel_flags(g) -> None:
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP: ranks sharing each layer")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="PP: pipeline stages")
    g.add_argument("--decoder-first-pipeline-num-layers", type=int, default=None,
                   help="layers on the first pipeline stage; the rest split evenly over the others "
                        "(default: an even split)")
    g.add_argument("--decoder-last-pipeline-num-layers", type=int, default=None,
                   help="layers on the last pipeline stage; the rest split evenly over the others "
                        "(default: an even split)")
    g.add_argument("--account-for-embedding-in-pipeline-split", action="store_true",
                   help="count the embedding as one layer of the first stage when splitting layers over PP")
    g.add_argument("--account-for-loss-in-pipeline-split", action="store_true",
                   help="count the loss (LM head) as one layer of the last stage when splitting layers over PP")
    _add_virtual_pipeline_flags(g)
    # Free text, checked in validation.py, so an unknown backend gets a message with the fix.
    g.add_argument("--distributed-backend", default=None,
                   help="nccl or gloo; default nccl when CUDA is available, else gloo")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="collective timeout")
    g.add_argument("--context-parallel-size", type=int, default=1,
                   help="CP: ranks sharing each sequence, rank r holding chunks r and 2CP-1-r of 2 x CP "
                        "(docs/context_parallel.md)")
    g.add_argument("--cp-comm-type", nargs="+", default=["p2p"],
                   help="how attention sees the other CP ranks' keys: p2p (ring), a2a (all-to-all over heads), "
                        "allgather (all_gather), a2a+p2p (with --hierarchical-context-parallel-sizes); one value, "
                        "or one per layer")
    g.add_argument("--hierarchical-context-parallel-sizes", nargs="+", type=int, default=None,
                   help="a2a+p2p: the sizes [a2a, p2p] of the CP group's two levels; their product is CP")
    g.add_argument("--use-tp-pp-dp-mapping", action="store_true",
                   help="rank order tp-pp-dp (pipeline ranks before data-parallel ones) instead of Megatron's "
                        "default tp-dp-pp: rank = tp + TP x (pp + PP x dp)")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="start each gradient bucket's DP reduction (all-reduce, or reduce-scatter with "
                        "--use-distributed-optimizer) during backward, as soon as its gradients are final")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="with --use-distributed-optimizer and --overlap-grad-reduce: run each bucket's parameter "
                        "all-gather during the next forward instead of at the end of the optimizer step")
    g.add_argument("--ddp-bucket-size", type=int, default=None,
                   help="elements per gradient bucket with --overlap-grad-reduce; default max(40M, 1M x DP)")
    g.add_argument("--ddp-num-buckets", type=int, default=None,
                   help="instead of --ddp-bucket-size: this rank's parameter count / N elements per bucket")
    g.add_argument("--ddp-average-in-collective", action="store_true",
                   help="Megatron: average in the DP collective instead of scaling before it. The same mean: "
                        "goldtron sums in the collective and divides after it either way (gloo has no average)")
    g.add_argument("--ddp-pad-buckets-for-high-nccl-busbw", action="store_true",
                   help="with --use-distributed-optimizer: pad each bucket to a multiple of 2^16 elements too")
    g.add_argument("--no-align-grad-reduce", action="store_false", dest="align_grad_reduce",
                   help="with --overlap-grad-reduce: pipeline stages after the first also start their reduction "
                        "from backward (default: after their last backward)")
    g.add_argument("--no-align-param-gather", action="store_false", dest="align_param_gather",
                   help="no effect without an interleaved schedule (Megatron then turns the alignment off): each "
                        "bucket's all-gather is started from the forward that needs the one before it")
    g.add_argument("--defer-embedding-wgrad-compute", action="store_true",
                   help="defer the output layer's weight-gradient GEMMs to the pipeline flush (PP > 1)")
    g.add_argument("--wgrad-deferral-limit", type=int, default=0,
                   help="defer only the first N micro-batches; 0 defers all")


def _add_virtual_pipeline_flags(g) -> None:
    """Megatron's interleaved (virtual) pipeline schedule (docs/virtual_pipeline.md)."""
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="interleaved schedule: layers per model chunk; chunks per rank = layers per rank / N")
    g.add_argument("--num-virtual-stages-per-pipeline-rank", type=int, default=None,
                   help="interleaved schedule: model chunks per pipeline rank (VP)")
    g.add_argument("--microbatch-group-size-per-virtual-pipeline-stage", type=int, default=None,
                   dest="microbatch_group_size_per_vp_stage",
                   help="interleaved schedule: micro-batches run back to back per chunk, PP to M (default PP)")
    # Megatron's p2p overlap (on by default there) changes when transfers are waited for, not what
    # is sent or computed; goldtron runs the same schedule with each slot's transfers batched.
    g.add_argument("--no-overlap-p2p-communication", action="store_false", dest="overlap_p2p_comm",
                   help="Megatron's batched p2p for the interleaved schedule (then PP > 2, as there); "
                        "same results either way")
    g.add_argument("--overlap-p2p-communication", action="store_true", dest="overlap_p2p_comm", default=True,
                   help="Megatron's older spelling of the default (p2p overlapped with compute); same results")
    g.add_argument("--overlap-p2p-communication-warmup-flush", action="store_true",
                   dest="overlap_p2p_comm_warmup_flush",
                   help="overlap p2p in the warmup and flush too (interleaved schedule); same results")


def _add_training_flags(g) -> None:
    g.add_argument("--micro-batch-size", type=int, default=None, help="required")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="default micro-batch x data-parallel size")
    g.add_argument("--train-iters", type=int, default=None,
                   help="training length in iterations (this or --train-samples is required)")
    g.add_argument("--train-samples", type=int, default=None,
                   help="training length in samples (Megatron's sample-based training): "
                        "train_iters = train_samples // global batch; excludes the *-iters schedule flags")
    g.add_argument("--exit-interval", type=int, default=None,
                   help="exit after the iteration that is a multiple of this")
    g.add_argument("--seed", type=int, default=megatron_defaults.SEED, help="seed of init, dropout and data order")
    g.add_argument("--deterministic-mode", action="store_true", help="torch deterministic algorithms")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (required)")
    g.add_argument("--min-lr", type=float, default=0.0, help="LR at the end of decay")
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
                   help="constant, linear or cosine are implemented")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default --train-iters")
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="warmup as a fraction of the decay length")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warmup length in iterations")
    g.add_argument("--lr-decay-samples", type=int, default=None,
                   help="with --train-samples: LR decay length in samples; default --train-samples")
    g.add_argument("--lr-warmup-samples", type=int, default=0,
                   help="with --train-samples: linear warmup length in samples (0 is also allowed with "
                        "--train-iters, as in Megatron)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="decoupled; not on biases and norms")
    g.add_argument("--clip-grad", type=float, default=1.0, help="global grad-norm clip; 0 disables")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="shard Adam state over the data-parallel ranks (ZeRO-1): reduce-scatter gradients, "
                        "update the owned range, all-gather parameters")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="normalize by the step's loss tokens (all micro-batches and DP ranks) instead of per "
                        "micro-batch: the backward loss is each micro-batch's sum, and the reduced gradients "
                        "are divided by the token count")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="only adam is implemented")
    g.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true",
                   help="take LR schedule settings from the checkpoint on resume")
    g.add_argument("--override-opt_param-scheduler", action="store_true",
                   help="take LR schedule settings from the flags, ignoring the checkpoint")
    g.add_argument("--check-weight-hash-across-dp-replicas-interval", type=int, default=None,
                   help="every N iterations, check that the data-parallel replicas hold bitwise the same "
                        "weights (SHA-256 of each parameter, compared with DP replica 0); a mismatch stops "
                        "every rank naming the parameter")
    g.add_argument("--rerun-mode", default="validate_results",
                   choices=["disabled", "validate_results", "report_determinism_stats", "report_stats"],
                   help="Megatron's re-run state machine on the step's loss (see docs/flags.md, rerun mode): "
                        "validate_results re-runs a step whose loss is NaN/Inf in place and exits 17 "
                        "(not reproducible) or 16 (reproducible); report_determinism_stats (report_stats) "
                        "re-runs every step once and logs the loss difference; disabled checks nothing")
    g.add_argument("--error-injection-rate", type=int, default=0,
                   help="with --rerun-mode validate_results: reject one step's loss in N at random (0: never)")
    g.add_argument("--error-injection-type", default="transient_error",
                   choices=["correct_result", "transient_error", "persistent_error"],
                   help="what an injected rejection looks like on the re-run: transient_error does not "
                        "reproduce; persistent_error and correct_result do")
    g.add_argument("--torch-threads", type=int, default=None,
                   help="goldtron only: intra-op threads per rank; default cpu_count // LOCAL_WORLD_SIZE. "
                        "A different thread count gives different CPU floating-point bits.")


def _add_recompute_flags(g) -> None:
    g.add_argument("--recompute-granularity", default=None, choices=["full", "selective"],
                   help="full: recompute whole transformer layers in backward (needs --recompute-method and "
                        "--recompute-num-layers); selective: recompute only the core attention")
    g.add_argument("--recompute-method", default=None, choices=["uniform", "block"],
                   help="full only: uniform = each pipeline stage's layers in chunks of N, one checkpoint per "
                        "chunk; block = the first N layers of each stage, one checkpoint each")
    g.add_argument("--recompute-num-layers", type=int, default=None,
                   help="full only: N of --recompute-method, 1 to the layers of the largest pipeline stage")
    g.add_argument("--recompute-activations", action="store_true",
                   help="legacy spelling of --recompute-granularity selective")


def _add_logging_flags(g) -> None:
    g.add_argument("--log-interval", type=int, default=100, help="iterations between stdout log lines")
    g.add_argument("--tensorboard-dir", default=None, help="write TensorBoard scalars here")
    g.add_argument("--tensorboard-log-interval", type=int, default=1, help="iterations between scalars")
    g.add_argument("--log-params-norm", action="store_true", help="log params-norm")
    g.add_argument("--log-num-zeros-in-grad", action="store_true", help="log num-zeros")
    g.add_argument("--log-validation-ppl-to-tensorboard", action="store_true", help="log lm loss validation ppl")
    g.add_argument("--log-timers-to-tensorboard", action="store_true", help="log iteration-time and timers")
    g.add_argument("--log-memory-to-tensorboard", action="store_true", help="log mem-(max-)allocated-bytes")
    g.add_argument("--timing-log-level", type=int, default=0, choices=[0, 1, 2], help="detail of timers")
    g.add_argument("--log-throughput", action="store_true", help="log TFLOP/s per rank")


def _add_checkpoint_flags(g) -> None:
    g.add_argument("--save", default=None, help="checkpoint directory to write")
    g.add_argument("--load", default=None, help="checkpoint directory to resume from")
    g.add_argument("--save-interval", type=int, default=None,
                   help="iterations between saves; without --save nothing is saved (a warning, as Megatron)")
    g.add_argument("--ckpt-format", default="torch_dist",
                   choices=["torch", "torch_dist", "zarr", "torch_dcp", "fsdp_dtensor"],
                   help="only torch_dist is implemented")
    g.add_argument("--no-load-optim", action="store_true", help="do not restore optimizer state")
    g.add_argument("--no-load-rng", action="store_true", help="do not restore RNG states")
    g.add_argument("--no-save-optim", action="store_true", help="do not write optimizer state")
    g.add_argument("--no-save-rng", action="store_true", help="do not write RNG states")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only and start from iteration 0")
    g.add_argument("--dist-ckpt-strictness", default="assume_ok_unexpected",
                   choices=["assume_ok_unexpected", "log_unexpected", "log_all", "raise_unexpected",
                            "raise_all", "return_unexpected", "return_all", "ignore_all"],
                   help="what to do with checkpoint keys that do not match the model")
    g.add_argument("--async-save", action="store_true", help="write checkpoints in the background")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true",
                   help="error instead of starting from scratch when --load has no checkpoint")


def _add_data_flags(g) -> None:
    g.add_argument("--data-path", nargs="+", default=None,
                   help="one dataset prefix, or weight-prefix pairs: 0.3 A 0.7 B")
    g.add_argument("--split", default=megatron_defaults.SPLIT, help="train,validation,test document weights")
    g.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json")
    g.add_argument("--merge-file", default=None, help="GPT-2 merges.txt")
    g.add_argument("--tokenizer-type", default=None,
                   choices=["BertWordPieceLowerCase", "BertWordPieceCase", "GPT2BPETokenizer",
                            "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HuggingFaceTokenizer",
                            "Llama2Tokenizer", "TikTokenizer", "MultimodalTokenizer", "NullTokenizer",
                            "NullMultimodalTokenizer"],
                   help="GPT2BPETokenizer or NullTokenizer; default inferred from --vocab-file/--vocab-size")
    g.add_argument("--data-cache-path", default=None, help="where dataset index arrays are cached")
    g.add_argument("--mock-data", action="store_true", help="synthetic data, no files needed")
    g.add_argument("--eval-interval", type=int, default=1000, help="iterations between validations")
    g.add_argument("--eval-iters", type=int, default=100, help="batches per validation")


def _add_no_effect_flags(g) -> None:
    for entry in NO_EFFECT_FLAGS:
        help_text = f"no effect: {entry.reason}".replace("%", "%%")
        if entry.value_type is None:
            g.add_argument(entry.flag, action="store_true", help=help_text)
        else:
            g.add_argument(entry.flag, type=entry.value_type, choices=entry.choices, default=None,
                           help=help_text)
