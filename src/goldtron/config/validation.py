"""Checks on the parsed flags and the fields derived from them.

Everything here is pure: it reads the namespace, the world size and a few facts about the
machine passed in by the caller, and either completes the namespace or raises ConfigError.
No process group is touched, so every rank reaches the same verdict on its own before the
first collective, and a bad configuration exits on all ranks instead of hanging one of them.

Problems are collected and reported together (one message, one line each), so a user fixes
a yaml file in one pass; a stage stops early only where later checks need earlier values.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from goldtron.config.errors import ConfigError
from goldtron.config.context_parallel import context_parallel_problems
from goldtron.config.virtual_pipeline import complete_microbatch_group, complete_virtual_stages
from goldtron.data.tokenizer import vocab_size_of
from goldtron.model.pipeline_split import PipelineSplit, describe_split, split_problems, virtual_stage_layer_counts

SUPPORTED_BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class MachineFacts:
    """What validation needs to know about the machine, gathered by the caller."""

    cuda_available: bool
    transformer_engine_installed: bool
    cpu_count: int
    local_world_size: int
    cuda_device_count: int = 0  # 0 when unknown or no CUDA


class _Problems:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise ConfigError(f"goldtron train: {self.messages[0]}")
        if self.messages:
            lines = "\n".join(f"  - {m}" for m in self.messages)
            raise ConfigError(f"goldtron train: {len(self.messages)} configuration problems:\n{lines}")


def validate_and_complete(args: argparse.Namespace, world_size: int, machine: MachineFacts) -> argparse.Namespace:
    problems = _Problems()
    if not isinstance(world_size, int) or world_size < 1:
        problems.add(f"world size {world_size!r} is not a positive integer; check the WORLD_SIZE "
                     "environment variable (torchrun sets it) or the world_size passed to parse_args.")
        problems.raise_if_any()
    args.world_size = world_size
    args.config_warnings = []  # valid Megatron input goldtron reads differently; main.py prints them

    _refuse_unimplemented_values(args, machine, problems)
    _require_flags(args, problems)
    _check_ranges(args, problems)
    _complete_norm_epsilon(args, problems)
    problems.raise_if_any()

    _complete_model_shape(args, problems)
    _complete_recompute(args, problems)
    for message in context_parallel_problems(args):
        problems.add(message)
    _complete_layout_and_batch(args, problems)
    _complete_training_length(args, problems)
    _complete_rerun_mode(args)
    for message in complete_microbatch_group(args):
        problems.add(message)
    _complete_backend(args, machine, problems)
    _check_embedding_wgrad_deferral(args, problems)
    _check_gradient_reduction(args, problems)
    _complete_lr_schedule(args, problems)
    _check_checkpointing(args, problems)
    _complete_data_and_tokenizer(args, problems)
    _complete_threads(args, machine, problems)
    problems.raise_if_any()

    args.params_dtype = _params_dtype(args.bf16)
    return args


def _refuse_unimplemented_values(args, machine: MachineFacts, problems: _Problems) -> None:
    if args.transformer_impl == "transformer_engine":
        installed = ("is installed here, but goldtron does not use it" if machine.transformer_engine_installed
                     else "is not installed here")
        problems.add("--transformer-impl transformer_engine: goldtron implements only its own PyTorch layers "
                     f"('local'); Transformer Engine {installed}. Use --transformer-impl local "
                     "(the gate's per-platform overrides do this for Megatron test cases).")
    if args.cuda_graph_impl != "none":
        where = ("this machine has no CUDA device to capture graphs on" if not machine.cuda_available
                 else "goldtron does not implement CUDA graphs")
        problems.add(f"--cuda-graph-impl {args.cuda_graph_impl}: CUDA graphs cannot run here ({where}). "
                     "Use --cuda-graph-impl none (Megatron's default) or remove the flag.")
    if args.fp16:
        problems.add("--fp16 is not implemented (no loss scaling). Use --bf16, or neither for fp32.")
    if args.fp16 and args.bf16:
        problems.add("--fp16 and --bf16 are both set; choose one (goldtron implements --bf16).")
    if args.use_rotary_position_embeddings:
        args.position_embedding_type = "rope"  # Megatron's legacy spelling, resolved as Megatron does
    unimplemented_values = [
        ("--normalization", args.normalization, ("LayerNorm", "RMSNorm")),
        ("--position-embedding-type", args.position_embedding_type, ("learned_absolute", "rope")),
        ("--optimizer", args.optimizer, ("adam",)),
        ("--ckpt-format", args.ckpt_format, ("torch_dist",)),
    ]
    for flag, value, supported in unimplemented_values:
        if value not in supported:
            problems.add(f"{flag} {value}: a Megatron option goldtron does not implement; "
                         f"only {' or '.join(supported)} {'is' if len(supported) == 1 else 'are'}. "
                         f"Use {flag} {supported[0]} or remove the flag.")
    if args.lr_decay_style not in ("constant", "linear", "cosine"):
        problems.add(f"--lr-decay-style {args.lr_decay_style}: a Megatron option goldtron does not implement; "
                     "use constant, linear or cosine.")
    if args.tokenizer_type not in (None, "GPT2BPETokenizer", "NullTokenizer"):
        problems.add(f"--tokenizer-type {args.tokenizer_type}: a Megatron tokenizer goldtron does not implement; "
                     "use GPT2BPETokenizer (with --vocab-file, --merge-file) or NullTokenizer (with --vocab-size).")


_REQUIRED = {
    "num_layers": "--num-layers N",
    "hidden_size": "--hidden-size H",
    "num_attention_heads": "--num-attention-heads A",
    "seq_length": "--seq-length S",
    "max_position_embeddings": "--max-position-embeddings P (at least --seq-length)",
    "micro_batch_size": "--micro-batch-size B",
    "lr": "--lr LR",
}


def _require_flags(args, problems: _Problems) -> None:
    missing = [usage for dest, usage in _REQUIRED.items() if getattr(args, dest) is None]
    if args.train_iters is None and args.train_samples is None:
        missing.append("--train-iters N (or --train-samples N)")
    if missing:
        problems.add("missing required flag(s): add " + ", ".join(missing) + ".")


_POSITIVE_INTS = (
    "num_layers", "hidden_size", "num_attention_heads", "seq_length", "max_position_embeddings",
    "micro_batch_size", "global_batch_size", "train_iters", "ffn_hidden_size", "kv_channels",
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "make_vocab_size_divisible_by",
    "vocab_size", "exit_interval", "save_interval", "log_interval", "tensorboard_log_interval",
    "eval_interval", "lr_decay_iters", "distributed_timeout_minutes", "torch_threads", "rotary_base",
    "train_samples", "lr_decay_samples", "check_weight_hash_across_dp_replicas_interval",
)
_NON_NEGATIVE = ("wgrad_deferral_limit", "lr_warmup_iters", "lr_warmup_samples", "eval_iters", "lr", "min_lr",
                 "weight_decay", "clip_grad", "init_method_std", "error_injection_rate")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-").replace("opt-param", "opt_param")


def _check_ranges(args, problems: _Problems) -> None:
    for dest in _POSITIVE_INTS:
        value = getattr(args, dest)
        if value is not None and value < 1:
            problems.add(f"{_flag(dest)} {value}: must be a positive integer.")
    for dest in _NON_NEGATIVE:
        value = getattr(args, dest)
        if value is not None and value < 0:
            problems.add(f"{_flag(dest)} {value}: must not be negative.")
    for dest in ("hidden_dropout", "attention_dropout", "lr_warmup_fraction"):
        value = getattr(args, dest)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.add(f"{_flag(dest)} {value}: must be between 0 and 1.")
    for dest in ("adam_beta1", "adam_beta2"):
        value = getattr(args, dest)
        if not 0.0 <= value < 1.0:
            problems.add(f"{_flag(dest)} {value}: must be in [0, 1).")
    if not 0.0 < args.rotary_percent <= 1.0:
        problems.add(f"--rotary-percent {args.rotary_percent}: must be in (0, 1] (the fraction of each head's "
                     "channels that RoPE rotates; 1.0 rotates them all).")
    if args.adam_eps <= 0 or args.layernorm_epsilon <= 0:
        problems.add("--adam-eps and --layernorm-epsilon must be positive.")


_DEFAULT_NORM_EPSILON = 1e-5


def _complete_norm_epsilon(args, problems: _Problems) -> None:
    """--norm-epsilon (Megatron's name) and --layernorm-epsilon (goldtron's) are one value: both
    fields end up holding it. Given both, they must agree (a non-default --layernorm-epsilon that
    differs from --norm-epsilon is a contradiction, not a choice)."""
    if args.norm_epsilon is None:
        args.norm_epsilon = args.layernorm_epsilon
        return
    if args.norm_epsilon <= 0:
        problems.add(f"--norm-epsilon {args.norm_epsilon}: must be positive.")
    if args.layernorm_epsilon not in (_DEFAULT_NORM_EPSILON, args.norm_epsilon):
        problems.add(f"--norm-epsilon {args.norm_epsilon} and --layernorm-epsilon {args.layernorm_epsilon} disagree; "
                     "they name the same epsilon: give one of them.")
    args.layernorm_epsilon = args.norm_epsilon


def _complete_model_shape(args, problems: _Problems) -> None:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if args.num_attention_heads % tp:
        problems.add(f"--num-attention-heads {args.num_attention_heads} is not divisible by "
                     f"--tensor-model-parallel-size {tp}: each TP rank needs whole heads. Choose a TP size "
                     "that divides the head count.")
    _complete_query_groups(args, problems)
    if args.apply_query_key_layer_scaling:
        args.attention_softmax_in_fp32 = True  # as Megatron's TransformerConfig: the scale is undone in fp32
    for message in complete_virtual_stages(args) + split_problems(PipelineSplit.from_args(args)):
        problems.add(message)
    if args.kv_channels is None:
        if args.hidden_size % args.num_attention_heads:
            problems.add(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
                         f"{args.num_attention_heads}; change one, or give --kv-channels explicitly.")
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.ffn_hidden_size is None and args.swiglu:
        # Megatron's: two fc1 projections, so 2/3 of 4h keeps the parameter count; a multiple of 64.
        args.ffn_hidden_size = int((4 * args.hidden_size * 2 / 3) / 64) * 64
        if args.ffn_hidden_size < 1:
            problems.add(f"--swiglu with --hidden-size {args.hidden_size}: Megatron's default MLP width "
                         "int(8h/3 / 64) x 64 is 0; give --ffn-hidden-size explicitly.")
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    _complete_rotary(args, problems)
    if args.ffn_hidden_size % tp:
        problems.add(f"--ffn-hidden-size {args.ffn_hidden_size} is not divisible by --tensor-model-parallel-size "
                     f"{tp}: the MLP is split column-wise over TP. Choose sizes that divide.")
    if args.seq_length > args.max_position_embeddings:
        problems.add(f"--seq-length {args.seq_length} is larger than --max-position-embeddings "
                     f"{args.max_position_embeddings}: positions past the table have no embedding. "
                     f"Raise --max-position-embeddings to at least {args.seq_length} or shorten --seq-length.")
    if args.sequence_parallel and tp == 1:
        # Megatron's arguments.py: warned and switched off (nothing to split over one TP rank).
        args.sequence_parallel = False
        args.config_warnings.append("Disabling sequence parallelism because tensor model parallelism is disabled "
                                    "(--sequence-parallel with --tensor-model-parallel-size 1)")
    if args.sequence_parallel and args.seq_length % tp:
        problems.add(f"--sequence-parallel splits the sequence over TP, but --seq-length {args.seq_length} is "
                     f"not divisible by --tensor-model-parallel-size {tp}: choose a --seq-length that is a "
                     f"multiple of {tp} (e.g. {args.seq_length - args.seq_length % tp or tp}), or drop "
                     "--sequence-parallel.")


def _complete_query_groups(args, problems: _Problems) -> None:
    """Megatron's grouped-query attention rules; without --group-query-attention every head is its
    own group (Megatron's TransformerConfig: num_query_groups = heads), so num_query_groups always
    says how many key/value heads the model has."""
    heads, tp, groups = args.num_attention_heads, args.tensor_model_parallel_size, args.num_query_groups
    if not args.group_query_attention:
        args.num_query_groups = heads
        return
    if groups < 1:
        problems.add(f"--num-query-groups {groups}: must be a positive integer (the number of key/value heads).")
        return
    if heads % groups:
        problems.add(f"--num-attention-heads {heads} is not divisible by --num-query-groups {groups}: each query "
                     "group has the same number of query heads. Choose a group count that divides the head count.")
    if groups % tp:
        problems.add(f"--num-query-groups {groups} is not divisible by --tensor-model-parallel-size {tp}: TP splits "
                     "the query groups, so each TP rank needs whole groups (their key and value heads). Use a group "
                     "count that is a multiple of TP, or a smaller TP.")


def _complete_rotary(args, problems: _Problems) -> None:
    """RoPE rotates the first rotary_dim channels of each head, in pairs (Megatron's rule for the size)."""
    args.rotary_dim = None
    if args.position_embedding_type != "rope":
        return
    args.rotary_dim = int(args.kv_channels * args.rotary_percent)
    if args.rotary_dim < 2 or args.rotary_dim % 2:
        problems.add(f"--rotary-percent {args.rotary_percent} x kv_channels {args.kv_channels} gives a rotary dim "
                     f"of {args.rotary_dim}; RoPE rotates channel pairs, so it must be even and at least 2. "
                     "Choose --rotary-percent (or --kv-channels) so that int(kv_channels x percent) is even.")


def _complete_layout_and_batch(args, problems: _Problems) -> None:
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    model_parallel = tp * pp * cp
    if args.world_size % model_parallel:
        named = f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp}" + \
            (f" x --context-parallel-size {cp}" if cp > 1 else "")
        problems.add(f"world size {args.world_size} is not TP x PP x {'CP x ' if cp > 1 else ''}DP: it is not "
                     f"divisible by {named} = {model_parallel}. Launch a multiple of {model_parallel} processes "
                     f"(torchrun --nproc-per-node) or change the sizes.")
        return
    dp = args.world_size // model_parallel
    args.data_parallel_size = dp
    per_step = args.micro_batch_size * dp
    if args.global_batch_size is None:
        args.global_batch_size = per_step  # Megatron's default: one micro-batch per DP rank
    if args.global_batch_size % per_step:
        problems.add(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
                     f"{args.micro_batch_size} x data-parallel size {dp} = {per_step}. Use a global batch that "
                     f"is a multiple of {per_step}, or change the micro-batch size or the number of processes.")
        return
    args.num_micro_batches = args.global_batch_size // per_step


def _complete_backend(args, machine: MachineFacts, problems: _Problems) -> None:
    if args.distributed_backend is None:
        args.distributed_backend = "nccl" if machine.cuda_available else "gloo"
    if args.distributed_backend not in SUPPORTED_BACKENDS:
        problems.add(f"--distributed-backend {args.distributed_backend}: unknown backend; use nccl (CUDA GPUs) "
                     "or gloo (CPU).")
    elif args.distributed_backend == "nccl" and not machine.cuda_available:
        problems.add("--distributed-backend nccl needs CUDA, and torch finds no CUDA device here. "
                     "Use --distributed-backend gloo on CPU.")
    elif args.distributed_backend == "nccl" and 0 < machine.cuda_device_count < machine.local_world_size:
        # Each rank takes GPU LOCAL_RANK; NCCL refuses two ranks on one GPU.
        problems.add(f"--distributed-backend nccl: {machine.local_world_size} ranks on this node but "
                     f"{machine.cuda_device_count} visible GPU(s); NCCL needs one GPU per rank. Start at most "
                     f"{machine.cuda_device_count} processes per node (torchrun --nproc-per-node), or a layout "
                     "that fits (--tensor-model-parallel-size x --pipeline-model-parallel-size).")


def _check_embedding_wgrad_deferral(args, problems: _Problems) -> None:
    if args.defer_embedding_wgrad_compute and args.pipeline_model_parallel_size == 1:
        problems.add("--defer-embedding-wgrad-compute needs --pipeline-model-parallel-size > 1 (as in Megatron): "
                     "the deferred GEMMs are hidden in the pipeline flush, which PP 1 does not have. "
                     "Remove the flag or use PP >= 2.")


def _check_gradient_reduction(args, problems: _Problems) -> None:
    """Megatron's rules for the DP gradient reduction flags (arguments.py, training.get_model and
    distributed_data_parallel.py), each quoted, with the fix."""
    if args.overlap_param_gather and not args.use_distributed_optimizer:
        problems.add("--overlap-param-gather only supported with distributed optimizer (Megatron's check): the "
                     "overlapped all-gather is the distributed optimizer's. Add --use-distributed-optimizer, or drop "
                     "--overlap-param-gather.")
    if args.overlap_param_gather and not args.overlap_grad_reduce:
        problems.add("Must use --overlap-param-gather with --overlap-grad-reduce (Megatron's check). Add "
                     "--overlap-grad-reduce, or drop --overlap-param-gather.")
    if args.calculate_per_token_loss and args.ddp_average_in_collective:
        problems.add("Cannot average in collective when calculating per-token loss! (Megatron's check): with "
                     "--calculate-per-token-loss the DP reduction is a sum, divided by the step's token count after "
                     "it. Drop --ddp-average-in-collective.")
    if args.ddp_num_buckets is not None and args.ddp_bucket_size is not None:
        problems.add("Cannot specify both --ddp-num-buckets and --ddp-bucket-size (Megatron's check); keep one.")
    if args.ddp_num_buckets is not None and args.ddp_num_buckets <= 0:
        problems.add(f"--ddp-num-buckets {args.ddp_num_buckets}: --ddp-num-buckets must be greater than 0 "
                     "(Megatron's check).")
    if args.ddp_bucket_size is not None and args.ddp_bucket_size <= 0:
        problems.add(f"--ddp-bucket-size {args.ddp_bucket_size}: must be a positive number of elements.")
    # Megatron ignores these silently without --overlap-grad-reduce (no bucketing); goldtron says so.
    given = [flag for flag, value in (("--ddp-bucket-size", args.ddp_bucket_size),
                                      ("--ddp-num-buckets", args.ddp_num_buckets)) if value is not None]
    if given and not args.overlap_grad_reduce:
        problems.add(f"{' and '.join(given)} given without --overlap-grad-reduce: without it the gradients are "
                     "reduced in one bucket after backward, so the bucket size changes nothing. Add "
                     "--overlap-grad-reduce, or drop the flag.")


def _complete_recompute(args, problems: _Problems) -> None:
    """Megatron's rules for activation recomputation (TransformerConfig and arguments.py)."""
    if args.recompute_activations:
        if args.recompute_granularity == "full":
            problems.add("--recompute-activations means --recompute-granularity selective, but "
                         "--recompute-granularity full is also given; keep one of the two.")
            return
        args.recompute_granularity = "selective"  # as Megatron: the legacy flag is selective
    granularity, method, n = args.recompute_granularity, args.recompute_method, args.recompute_num_layers
    split = PipelineSplit.from_args(args)
    # Per model chunk: with an interleaved pipeline each chunk is its own block of layers (Megatron).
    counts = None if split_problems(split) else virtual_stage_layer_counts(split)  # bad splits: reported above
    # N is checked against the largest stage; a smaller stage recomputes all of its layers (block),
    # as Megatron's block loop does. The even split has one size, so this is the usual rule there.
    per_stage = max(counts) if counts else None
    if split.is_even and split.virtual_stages == 1:
        stage_text = (f"{per_stage} here (--num-layers {args.num_layers} / --pipeline-model-parallel-size "
                      f"{split.pp_size})")
    else:
        stage_text = f"{per_stage} here (the largest stage of the split {describe_split(split)})"
    if granularity is None:
        # Megatron ignores them silently; goldtron says so, since they would change nothing.
        given = [f for f, v in (("--recompute-method", method), ("--recompute-num-layers", n)) if v is not None]
        if given:
            them = ("it", "takes", "it") if len(given) == 1 else ("they", "take", "them")
            problems.add(f"{' and '.join(given)} given without --recompute-granularity: {them[0]} only {them[1]} "
                         f"effect with --recompute-granularity full. Add it, or drop {them[2]}.")
    elif granularity == "selective":
        if method is not None:
            problems.add(f"--recompute-method {method} is not supported with --recompute-granularity selective "
                         "(as in Megatron): selective recomputes the core attention of every layer. Drop "
                         "--recompute-method, or use --recompute-granularity full.")
        if n is not None:
            problems.add(f"--recompute-num-layers {n} must not be given with --recompute-granularity selective "
                         "(as in Megatron). Drop it, or use --recompute-granularity full.")
    else:  # full
        if method is None:
            problems.add("--recompute-granularity full needs --recompute-method uniform (chunks of N layers) or "
                         "block (the first N layers of each pipeline stage), as in Megatron.")
        if n is None:
            problems.add("--recompute-granularity full needs --recompute-num-layers N, between 1 and the layers "
                         f"per pipeline stage{', ' + stage_text if per_stage else ''}.")
        elif per_stage is not None and not 1 <= n <= per_stage:
            problems.add(f"--recompute-num-layers {n}: must be between 1 and the layers per pipeline stage, "
                         f"{stage_text}.")
        elif counts is not None and method == "uniform" and any(c % n for c in counts):
            uneven_stages = ", ".join(f"stage {s} has {c}" for s, c in enumerate(counts) if c % n)
            problems.add(f"--recompute-method uniform with --recompute-num-layers {n}: the layers per pipeline "
                         f"stage ({uneven_stages}; {describe_split(split)}) are not a whole number of chunks of {n} "
                         "(Megatron fails on this too). Choose N that divides every stage's layers, or "
                         "--recompute-method block.")


def _complete_training_length(args, problems: _Problems) -> None:
    """Megatron's two ways to say how long to train, never mixed: iterations (--train-iters with the
    *-iters schedule flags) or samples (--train-samples with the *-samples ones; then
    train_iters = train_samples // global batch, as Megatron's update_train_iters without ramp-up)."""
    args.sample_based_training = args.train_samples is not None
    if args.train_iters is not None and args.train_samples is not None:
        problems.add(f"--train-iters {args.train_iters} and --train-samples {args.train_samples} are both set "
                     "(Megatron: 'expected sample-based training'); give one of them.")
        return
    if args.sample_based_training:
        _refuse_other_units_schedule(args, problems, "--train-samples", "sample", ("lr_decay_iters", "lr_warmup_iters"),
                                     "Use --lr-decay-samples / --lr-warmup-samples (or --lr-warmup-fraction) instead.")
        if args.lr_warmup_fraction is not None and args.lr_warmup_samples:
            problems.add("--lr-warmup-fraction and --lr-warmup-samples are both set; give only one.")
        if getattr(args, "num_micro_batches", None) is not None:  # else the batch is invalid, already reported
            if args.train_samples < args.global_batch_size:
                problems.add(f"--train-samples {args.train_samples} is less than one global batch "
                             f"({args.global_batch_size}): no iteration would run. Raise --train-samples.")
            args.train_iters = args.train_samples // args.global_batch_size
    else:
        _refuse_other_units_schedule(args, problems, "--train-iters", "iteration",
                                     ("lr_decay_samples", "lr_warmup_samples"),
                                     "Use --lr-decay-iters / --lr-warmup-iters, or train with --train-samples.")


def _refuse_other_units_schedule(args, problems: _Problems, length_flag: str, unit: str, other_dests: tuple[str, str],
                                 fix: str) -> None:
    """The decay and warmup flags counted in the other unit than the training length (their
    defaults are None and 0), as Megatron's validate_args asserts."""
    decay, warmup = other_dests
    mixed = [_flag(dest) for dest, given in ((decay, getattr(args, decay) is not None),
                                             (warmup, getattr(args, warmup) != 0)) if given]
    if mixed:
        article = "an" if unit[0] in "aeiou" else "a"
        problems.add(f"{' and '.join(mixed)} with {length_flag}: {unit}-based training takes {article} {unit}-based "
                     f"schedule (Megatron: 'expected {unit}-based learning rate decay/warmup'). {fix}")


def _complete_rerun_mode(args) -> None:
    if args.rerun_mode == "report_stats":
        args.rerun_mode = "report_determinism_stats"  # newer Megatron's name of the same mode
    if args.error_injection_rate and args.rerun_mode != "validate_results":
        args.config_warnings.append(f"--error-injection-rate {args.error_injection_rate} has no effect with "
                                    f"--rerun-mode {args.rerun_mode} (as in Megatron: only validate_results "
                                    "injects).")


def _complete_lr_schedule(args, problems: _Problems) -> None:
    """Megatron counts the schedule in samples: iterations x global batch, or the *-samples flags."""
    if args.min_lr > args.lr:
        problems.add(f"--min-lr {args.min_lr} is above --lr {args.lr}; the LR decays from --lr down to --min-lr.")
    if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
        problems.add("--lr-warmup-fraction and --lr-warmup-iters are both set; give only one.")
    if args.train_iters is None or getattr(args, "num_micro_batches", None) is None:
        return  # the length or the batch is invalid; already reported
    if args.sample_based_training:
        if args.lr_decay_samples is None:
            args.lr_decay_samples = args.train_samples
        args.lr_decay_iters = None  # Megatron's own field stays unset in sample-based training
        decay_text = f"--lr-decay-samples {args.lr_decay_samples}"
        warmup_flags = "--lr-warmup-samples / --lr-warmup-fraction"  # lr_warmup_samples is the flag itself
    else:
        if args.lr_decay_iters is None:
            args.lr_decay_iters = args.train_iters
        args.lr_decay_samples = args.lr_decay_iters * args.global_batch_size
        decay_text = f"--lr-decay-iters {args.lr_decay_iters} x global batch"
        warmup_flags = "--lr-warmup-iters / --lr-warmup-fraction"
        if args.lr_warmup_fraction is None:
            args.lr_warmup_samples = args.lr_warmup_iters * args.global_batch_size
    if args.lr_warmup_fraction is not None:
        args.lr_warmup_samples = args.lr_warmup_fraction * args.lr_decay_samples
    if args.lr_warmup_samples >= args.lr_decay_samples:
        problems.add(f"LR warmup ({args.lr_warmup_samples} samples) must be shorter than LR decay "
                     f"({args.lr_decay_samples} samples = {decay_text}). "
                     f"Lower {warmup_flags} or lengthen the decay.")
    if args.use_checkpoint_opt_param_scheduler and args.override_opt_param_scheduler:
        problems.add("--use-checkpoint-opt_param-scheduler and --override-opt_param-scheduler contradict each other "
                     "(schedule from the checkpoint vs from the flags); give at most one.")


def _check_checkpointing(args, problems: _Problems) -> None:
    if args.save_interval is not None and args.save is None:
        # Megatron accepts this and saves nothing; so does goldtron, saying so.
        args.config_warnings.append(f"--save-interval {args.save_interval} is set but --save is not: no "
                                    "checkpoint will be written (add --save DIR to save).")


def _complete_data_and_tokenizer(args, problems: _Problems) -> None:
    # --mock-data wins over --data-path, as in Megatron (the prefix is then not read).
    # Neither: goldtron's embedded corpus (real English, GPT-2 BPE), built on first use.
    if args.data_path and len(args.data_path) > 1:
        _check_weighted_data_path(args.data_path, problems)
    _check_split(args.split, problems)

    if args.tokenizer_type is None:
        if args.mock_data and args.vocab_size is not None and args.vocab_file is None:
            args.tokenizer_type = "NullTokenizer"
        elif args.vocab_size is not None and args.data_path and args.vocab_file is None:
            args.tokenizer_type = "NullTokenizer"
        else:
            args.tokenizer_type = "GPT2BPETokenizer"
    if args.tokenizer_type == "GPT2BPETokenizer" and (args.vocab_file is None) != (args.merge_file is None):
        problems.add("--tokenizer-type GPT2BPETokenizer: give both --vocab-file and --merge-file, or neither "
                     "(then GPT-2's own BPE files, shipped with the package, are used).")
    elif args.tokenizer_type == "NullTokenizer" and args.vocab_size is None:
        problems.add("--tokenizer-type NullTokenizer needs --vocab-size V.")
    else:
        # The model's vocabulary: the tokenizer's ids (real rows) and the TP-dependent padding.
        args.real_vocab_size = vocab_size_of(args.tokenizer_type, args.vocab_file, args.vocab_size)
        args.padded_vocab_size = padded_vocab_size(args.real_vocab_size, args.make_vocab_size_divisible_by,
                                                   args.tensor_model_parallel_size)


def _check_weighted_data_path(data_path: list[str], problems: _Problems) -> None:
    if len(data_path) % 2:
        problems.add(f"--data-path {' '.join(data_path)}: with several datasets give weight-prefix pairs "
                     "(0.3 A 0.7 B); found an odd number of items.")
        return
    for weight in data_path[0::2]:
        try:
            if float(weight) < 0:
                raise ValueError
        except ValueError:
            problems.add(f"--data-path: {weight!r} is not a non-negative weight; weighted datasets are "
                         "written as weight-prefix pairs: 0.3 A 0.7 B.")


def _split_weights(split: str) -> list[float]:
    """Megatron's --split '949,50,1' (or '949/50/1') as three weights; missing ones are 0.

    Only a syntax check at start-up; the data package does the real split of documents.
    """
    parts = [p.strip() for p in split.replace("/", ",").split(",")]
    weights = [float(p) for p in parts]
    if len(weights) > 3 or any(w < 0 for w in weights) or not any(weights):
        raise ValueError(split)
    return weights + [0.0] * (3 - len(weights))


def _check_split(split: str, problems: _Problems) -> None:
    try:
        _split_weights(split)
    except ValueError:
        problems.add(f"--split {split!r}: expected up to three non-negative weights such as 949,50,1 "
                     "(train, validation, test), not all zero.")


def _complete_threads(args, machine: MachineFacts, problems: _Problems) -> None:
    if args.torch_threads is None:
        if machine.local_world_size < 1:
            problems.add(f"LOCAL_WORLD_SIZE {machine.local_world_size} is not a positive integer; "
                         "fix the environment or pass --torch-threads N.")
            return
        args.torch_threads = max(1, machine.cpu_count // machine.local_world_size)


def _params_dtype(bf16: bool):
    import torch  # imported here so building the parser (e.g. for --help) stays cheap

    return torch.bfloat16 if bf16 else torch.float32


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int, tp_size: int) -> int:
    """Megatron's padding: the smallest multiple of (divisible_by x TP) that holds the vocab."""
    for name, value in (("vocab_size", vocab_size), ("make_vocab_size_divisible_by", make_vocab_size_divisible_by),
                        ("tp_size", tp_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"padded_vocab_size: {name} must be a positive integer, got {value!r}.")
    multiple = make_vocab_size_divisible_by * tp_size
    return math.ceil(vocab_size / multiple) * multiple
