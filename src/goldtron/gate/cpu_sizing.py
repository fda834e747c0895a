"""Any Megatron case sized for a CPU: the same structure, smaller numbers (`goldtron test --size cpu`).

What is kept: the case's TP/PP/VP/CP/EP layout, every feature flag, TEST_TYPE, the micro-batches
per step (the pipeline schedule's shape), the unevenness of an uneven pipeline split, grouped-query
attention's grouping, and where the checkpoint and the resume fall (in proportion to the run).
What shrinks: data parallelism first (it only repeats the other ranks' work), then the sizes:
layers (a multiple of PP x VP that keeps Megatron's split rules), heads and hidden (every
divisibility Megatron checks: heads and query groups by TP, heads by CP for all-to-all), the
sequence (a multiple of 2 x CP for context parallelism's chunks, of TP for sequence parallelism),
micro-batch size and iterations. Precision becomes fp32 (bf16 GEMMs take vendor-specific CPU
paths), the backend gloo, the layers goldtron's own.

The rules are pure functions of the case's MODEL_ARGS and the targets in `CpuSize`: the same
case always sizes the same way, on any machine. What no CPU run can hold (more model-parallel
ranks than `max_ranks`) is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from goldtron.config.virtual_pipeline import chunks_per_rank
from goldtron.gate.case import DEFAULT_TRAINER, whole_number
from goldtron.gate.errors import GateInputError
from goldtron.trainer_contract import ITERATION_TIME

MEGATRON_WORLD_SIZE = 8  # Megatron runs its functional cases on one 8-GPU node unless told otherwise.
CPU_ENV_VARS = {"OMP_NUM_THREADS": "1"}
# Flags a CPU cannot honour and their CPU value (None: removed), with the reason shown to the user.
CPU_SUBSTITUTIONS = (
    ("--transformer-impl", "local", "no Transformer Engine on a CPU: goldtron's own layers"),
    ("--distributed-backend", "gloo", "NCCL needs GPUs"),
    ("--bf16", None, "fp32 on CPUs: bf16 GEMMs take vendor-specific paths (AMX, AVX512-BF16 or emulation)"),
    ("--fp16", None, "fp32 on CPUs"),
    ("--torch-threads", 1, "one intra-op thread per rank: ranks share the cores, and the bits do not depend on the machine"),
)


@dataclass(frozen=True)
class CpuSize:
    """The targets of a CPU-size run, chosen so a case's two phases take a minute or two on 2 cores."""

    max_ranks: int = 8          # model-parallel ranks (TP x PP x CP) a CPU run holds at most
    target_ranks: int = 4       # data parallelism is shrunk until the world fits this
    min_layers: int = 4         # transformer layers of an even split, at least PP x VP
    head_dim: int = 16
    min_heads: int = 4
    seq_length: int = 128
    micro_batch_size: int = 2
    max_micro_batches: int = 8  # per step and data-parallel rank
    train_iters: int = 20
    eval_iters: int = 2
    warmup_fraction: float = 0.1


@dataclass(frozen=True)
class SizeChange:
    flag: str
    megatron: object
    cpu: object
    reason: str = ""

    def line(self) -> str:
        def shown(value):
            return "(unset)" if value is None else "true" if value is True else str(value)
        reason = f"  ({self.reason})" if self.reason else ""
        return f"{self.flag}: {shown(self.megatron)} -> {shown(self.cpu)}{reason}"


@dataclass(frozen=True)
class SizedArgs:
    model_args: dict
    env_vars: dict
    nproc: int
    changes: tuple[SizeChange, ...]


class _Args:
    """The case's MODEL_ARGS being sized: reads with defaults, writes that record the change."""

    def __init__(self, model_args: dict, source: str):
        self.values = dict(model_args)
        self.source = source
        self.changes: list[SizeChange] = []

    def int(self, flag: str, default: int | None = None) -> int | None:
        value = self.values.get(flag, default)
        if value is None or value is False:
            return default
        number = whole_number(value)
        if number is None:
            raise GateInputError(f"{self.source}: MODEL_ARGS.{flag} = {value!r}: expected a whole number")
        return number

    def on(self, flag: str) -> bool:
        return self.values.get(flag) not in (None, False)

    def set(self, flag: str, value, reason: str = "") -> None:
        old = self.values.get(flag)
        if old is False:
            old = None
        if old == value and type(old) is type(value):
            return
        if value is None:
            self.values.pop(flag, None)
        else:
            self.values[flag] = value
        self.changes.append(SizeChange(flag, old, value, reason))

    def shrink(self, flag: str, value: int, reason: str = "") -> None:
        """Set `flag` to `value` if the case gives the flag (a default stays a default)."""
        if self.int(flag) is not None:
            self.set(flag, value, reason)

    def refuse(self, message: str) -> GateInputError:
        return GateInputError(f"{self.source}: cannot size this case for a CPU: {message}")


def size_model_args(model_args: dict, source: str, size: CpuSize = CpuSize(),
                    megatron_world_size: int = MEGATRON_WORLD_SIZE, goldtron_trainer: bool = True) -> SizedArgs:
    """The case's MODEL_ARGS at CPU size, the number of ranks to launch, and every change made.
    `goldtron_trainer`: the case runs goldtron's trainer, which takes --torch-threads."""
    args = _Args(model_args, source)
    world = _size_layout_and_batch(args, size, megatron_world_size)
    _size_layers(args, size)
    _size_attention_and_widths(args, size)
    _size_sequence(args, size)
    _size_schedule(args, size)
    for flag, value, reason in CPU_SUBSTITUTIONS:
        if (flag == "--torch-threads" and goldtron_trainer) or args.on(flag):
            args.set(flag, value, reason)
    return SizedArgs(args.values, dict(CPU_ENV_VARS), world, tuple(args.changes))


# ---- layout and batch ------------------------------------------------------------------------
def _virtual_stages(args: _Args) -> int:
    """VP: given directly, or as layers per virtual stage (Megatron: (L / PP) / that)."""
    vp = args.int("--num-virtual-stages-per-pipeline-rank")
    if vp:
        return vp
    per_stage = args.int("--num-layers-per-virtual-pipeline-stage")
    if not per_stage:
        return 1
    units = args.on("--account-for-embedding-in-pipeline-split") + args.on("--account-for-loss-in-pipeline-split")
    return chunks_per_rank(args.int("--num-layers", 1), args.int("--pipeline-model-parallel-size", 1), units,
                           per_stage) or 1


def _size_layout_and_batch(args: _Args, size: CpuSize, megatron_world: int) -> int:
    tp = args.int("--tensor-model-parallel-size", 1)
    pp = args.int("--pipeline-model-parallel-size", 1)
    cp = args.int("--context-parallel-size", 1)
    ep = args.int("--expert-model-parallel-size", 1)
    model_ranks = tp * pp * cp
    if model_ranks > size.max_ranks:
        raise args.refuse(f"TP {tp} x PP {pp} x CP {cp} = {model_ranks} model-parallel ranks, more than the "
                          f"{size.max_ranks} a CPU run holds (the layout is what the case tests, so it is not shrunk)")
    if megatron_world % model_ranks:
        raise args.refuse(f"TP x PP x CP = {model_ranks} does not divide Megatron's {megatron_world} GPUs")
    dp = megatron_world // model_ranks
    # Data parallelism shrinks first, to a divisor of Megatron's, keeping what expert parallelism needs.
    fitting = [d for d in range(dp, 0, -1) if dp % d == 0 and (d * cp) % ep == 0]
    within = [d for d in fitting if d * model_ranks <= size.target_ranks]
    if not fitting:
        raise args.refuse(f"--expert-model-parallel-size {ep} does not divide DP x CP = {dp * cp}")
    cpu_dp = within[0] if within else fitting[-1]
    if cpu_dp * model_ranks > size.max_ranks:
        raise args.refuse(f"EP {ep} needs DP {cpu_dp}, so {cpu_dp * model_ranks} ranks: more than {size.max_ranks}")

    mbs = args.int("--micro-batch-size", 1)
    gbs = args.int("--global-batch-size", mbs * dp)
    if gbs % (mbs * dp):
        raise args.refuse(f"--global-batch-size {gbs} is not a multiple of micro-batch x DP = {mbs * dp}")
    micro_batches = gbs // (mbs * dp)
    cpu_micro_batches = _fewer_micro_batches(args, micro_batches, pp, size)
    cpu_mbs = min(mbs, size.micro_batch_size)
    args.shrink("--micro-batch-size", cpu_mbs)
    why = [f"DP {dp} -> {cpu_dp}"] if cpu_dp != dp else []
    why += [f"{micro_batches} -> {cpu_micro_batches} micro-batches per step"] if cpu_micro_batches != micro_batches else []
    args.set("--global-batch-size", cpu_mbs * cpu_dp * cpu_micro_batches, ", ".join(why))
    return model_ranks * cpu_dp


def _fewer_micro_batches(args: _Args, micro_batches: int, pp: int, size: CpuSize) -> int:
    """Keep the step's micro-batch count unless it is large; then the most that keeps its
    divisibility by PP and by the virtual-pipeline group (the interleaved schedule's rules)."""
    if micro_batches <= size.max_micro_batches:
        return micro_batches
    group = args.int("--microbatch-group-size-per-virtual-pipeline-stage") or 1
    step = math.lcm(pp if micro_batches % pp == 0 else 1, group if micro_batches % group == 0 else 1)
    fewer = (size.max_micro_batches // step) * step
    return max(fewer, step, pp)


# ---- layers ------------------------------------------------------------------------------------
def _size_layers(args: _Args, size: CpuSize) -> None:
    layers = args.int("--num-layers", 1)
    pp = args.int("--pipeline-model-parallel-size", 1)
    vp = _virtual_stages(args)
    first, last = args.int("--decoder-first-pipeline-num-layers"), args.int("--decoder-last-pipeline-num-layers")
    if first is not None or last is not None:
        cpu_layers = _size_uneven_split(args, layers, pp, first, last)
    else:
        units = args.on("--account-for-embedding-in-pipeline-split") + args.on("--account-for-loss-in-pipeline-split")
        stages = pp * vp
        per_stage = (layers + units) // stages if (layers + units) % stages == 0 else None
        if per_stage is None:
            return  # not a valid split: validation names it at CPU size as at Megatron's
        cpu_per_stage = min(per_stage, max(1, math.ceil((size.min_layers + units) / stages)))
        cpu_layers = cpu_per_stage * stages - units
        args.shrink("--num-layers-per-virtual-pipeline-stage", cpu_per_stage)
    args.set("--num-layers", cpu_layers)
    per_rank = cpu_layers // max(1, pp * vp)
    recompute = args.int("--recompute-num-layers")
    if recompute is not None and per_rank >= 1 and recompute > per_rank:
        args.set("--recompute-num-layers", per_rank, "at most the layers of a stage")


def _size_uneven_split(args: _Args, layers: int, pp: int, first: int | None, last: int | None) -> int:
    """Megatron's first/last counts, with the middle stages' even share, all divided by their
    common factor: 2,4,4,2 becomes 1,2,2,1 (the split stays uneven)."""
    middle_stages = pp - (first is not None) - (last is not None)
    middle = layers - (first or 0) - (last or 0)
    if middle < 0 or (middle_stages and middle % middle_stages) or (not middle_stages and middle):
        return layers  # an invalid split: leave it for validation to name
    per_middle = middle // middle_stages if middle_stages else 0
    factor = math.gcd(*(count for count in (first, last, per_middle) if count))
    if first is not None:
        args.set("--decoder-first-pipeline-num-layers", first // factor)
    if last is not None:
        args.set("--decoder-last-pipeline-num-layers", last // factor)
    return layers // factor


# ---- attention heads and widths ----------------------------------------------------------------
def _size_attention_and_widths(args: _Args, size: CpuSize) -> None:
    tp = args.int("--tensor-model-parallel-size", 1)
    heads = args.int("--num-attention-heads", 1)
    hidden = args.int("--hidden-size", heads * size.head_dim)
    # All-to-all context parallelism splits each TP rank's heads over the CP group.
    a2a = "a2a" in str(args.values.get("--cp-comm-type", ""))
    head_multiple = tp * (args.int("--context-parallel-size", 1) if a2a else 1)
    if args.on("--group-query-attention"):
        groups = args.int("--num-query-groups", heads)
        queries_per_group = heads // groups if groups and heads % groups == 0 else 1
        cpu_ratio = min(queries_per_group, 2)  # GQA stays GQA, MHA-like grouping stays so
        cpu_groups = _smallest_multiple(tp, math.ceil(size.min_heads / cpu_ratio), groups)
        cpu_heads = cpu_groups * cpu_ratio
        cpu_heads = _smallest_multiple(head_multiple, cpu_heads, heads)
        args.set("--num-query-groups", cpu_groups)
    else:
        cpu_heads = _smallest_multiple(head_multiple, size.min_heads, heads)
    cpu_hidden = cpu_heads * size.head_dim
    args.set("--num-attention-heads", cpu_heads)
    args.set("--hidden-size", cpu_hidden, f"{cpu_heads} heads of {size.head_dim}")
    args.shrink("--kv-channels", size.head_dim)
    for flag in ("--ffn-hidden-size", "--moe-ffn-hidden-size", "--moe-shared-expert-intermediate-size"):
        width = args.int(flag)
        if width is not None:  # the case's ratio to the hidden size, a multiple of TP
            args.set(flag, max(tp, round(width * cpu_hidden / hidden / tp) * tp), "same ratio to the hidden size")
    experts = args.int("--num-experts")
    if experts:
        ep = args.int("--expert-model-parallel-size", 1)
        cpu_experts = _smallest_multiple(ep, min(experts, 4), experts)
        args.set("--num-experts", cpu_experts)
        topk = args.int("--moe-router-topk")
        if topk and topk > cpu_experts:
            args.set("--moe-router-topk", cpu_experts)


def _smallest_multiple(multiple: int, at_least: int, at_most: int) -> int:
    """The smallest multiple of `multiple` that is >= at_least, but never above the case's own
    value (which Megatron already checked divides)."""
    value = max(multiple, math.ceil(at_least / multiple) * multiple)
    return at_most if value > at_most else value


# ---- sequence ----------------------------------------------------------------------------------
def _size_sequence(args: _Args, size: CpuSize) -> None:
    seq = args.int("--seq-length")
    if seq is None:
        return
    multiple = 2 * args.int("--context-parallel-size", 1)  # causal load balancing: 2 x CP chunks
    if args.on("--sequence-parallel"):
        multiple = math.lcm(multiple, args.int("--tensor-model-parallel-size", 1))
    cpu_seq = max(multiple, (min(seq, size.seq_length) // multiple) * multiple) if seq > size.seq_length else seq
    args.set("--seq-length", cpu_seq)
    positions = args.int("--max-position-embeddings")
    if positions is not None and positions > cpu_seq:
        args.set("--max-position-embeddings", cpu_seq)


# ---- iterations, checkpoints, LR schedule ------------------------------------------------------
def _size_schedule(args: _Args, size: CpuSize) -> None:
    iters = args.int("--train-iters")
    if iters is None:
        return  # sample-based cases: validation names what is missing
    cpu_iters = min(iters, size.train_iters)
    args.set("--train-iters", cpu_iters)
    save = args.int("--save-interval")
    if save is not None and save < iters:
        # The checkpoint moves with the run (Megatron's ckpt-resume resumes at N/2).
        scaled = max(1, round(save * cpu_iters / iters))
        half = cpu_iters // 2
        args.set("--save-interval", scaled if half % scaled == 0 else half, "in proportion to the run")
    evaluation = args.int("--eval-interval")
    if evaluation is not None and evaluation < iters:
        args.set("--eval-interval", max(1, round(evaluation * cpu_iters / iters)), "in proportion to the run")
    args.shrink("--eval-iters", min(args.int("--eval-iters", 0), size.eval_iters))
    if args.int("--lr-decay-iters") is not None or args.on("--lr-warmup-fraction") or args.int("--lr-warmup-iters"):
        # Megatron's schedules warm up over thousands of iterations: tens of iterations would
        # hardly move the weights. The same schedule, compressed to the run (as the flagship's
        # CPU override does).
        reason = "LR schedule compressed to the run"
        args.set("--lr-decay-iters", cpu_iters, reason)
        if args.int("--lr-warmup-iters") is not None:
            args.set("--lr-warmup-iters", max(1, round(size.warmup_fraction * cpu_iters)), reason)
        else:
            args.set("--lr-warmup-fraction", size.warmup_fraction, reason)


SIZES = ("auto", "cpu", "full")


def wants_cpu_size(requested: str, platform: str, case) -> bool:
    """--size auto: CPU size on a CPU machine for a case that runs goldtron's trainer and has no
    PLATFORMS override for this machine (an override is the case author's own sizing)."""
    if requested != "auto":
        return requested == "cpu"
    return platform.startswith("cpu") and not case.override_for(platform) and tuple(case.trainer) == DEFAULT_TRAINER


def sized_case(case, size: CpuSize = CpuSize(), frozen_checkpoint_given: bool = False):
    """`case` (a gate Case) at CPU size, and the changes made, for the report.

    A frozen-resume case resumes from a stored checkpoint of Megatron's size, which the CPU-size
    model cannot load; without a CPU-size one (`frozen_checkpoint_given`) it runs as ckpt-resume:
    run 2 resumes from the checkpoint run 1 wrote half-way, the same train-save-resume structure."""
    sized = size_model_args(case.model_args, str(case.config_file), size,
                            goldtron_trainer=tuple(case.trainer) == DEFAULT_TRAINER)
    env_vars = dict(case.env_vars, **sized.env_vars)
    tolerances = {metric: dict(values) for metric, values in case.tolerances.items()}
    if ITERATION_TIME in case.metrics:
        # Ranks share a few cores with the gate and the OS: step times vary far more than on a
        # DGX node (the flagship's CPU override measured 1.19 s vs 2.08 s per step with one other
        # job beside it). A 100% band still catches a slowdown beyond 2x.
        tolerances[ITERATION_TIME] = dict(tolerances.get(ITERATION_TIME, {}), approx_rtol=1.0)
    changes, test_type = sized.changes, case.test_type
    if test_type == "frozen-resume" and case.frozen_checkpoint is None and not frozen_checkpoint_given:
        test_type = "ckpt-resume"
        changes += (SizeChange("TEST_TYPE", "frozen-resume", test_type,
                               "no stored checkpoint of the CPU-size model: run 2 resumes from run 1's own"),)
    return replace(case, model_args=sized.model_args, env_vars=env_vars, nproc_per_node=sized.nproc,
                   tolerances=tolerances, test_type=test_type), changes
