"""Run a case's training phases as its TEST_TYPE asks, with the case's env and filled flags.

- regular:       run 1 trains to N.
- ckpt-resume:   run 1 trains to N saving at N/2 (and N); the checkpoints after N/2 are
                 removed and the tracker set to N/2; run 2 (same flags) resumes to N.
- frozen-resume: run 1 loads a stored checkpoint (GOLDTRON.FROZEN_CHECKPOINT or
                 --frozen-checkpoint) and trains on.
Layout of one repeat: `<out>/repeat_<k>/{run1,run2}/{tensorboard,torchrun.log,ranks/}` and
`<out>/repeat_<k>/checkpoints/`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from goldtron.gate.case import (
    DEFAULT_TRAINER, PLACEHOLDERS, SUPPORTED_TEST_TYPES, Case, model_args_to_argv, whole_number,
)
from goldtron.gate.errors import GateInputError
from goldtron.gate.interrupts import GateInterrupted
from goldtron.gate.launcher import LaunchOptions, PhaseOutcome, phase_argv, run_phase

TRACKER = "latest_checkpointed_iteration.txt"
PHASES_PER_REPEAT = 2  # ports and rendezvous ids are numbered per phase slot


@dataclass
class RunOptions:
    output_dir: Path
    data_path: Path
    launch: LaunchOptions
    progress: object
    frozen_checkpoint: Path | None = None
    repeats: int = 1
    run_name: str = ""  # what progress lines call the runs ("" = the case's name)


@dataclass
class RepeatRun:
    index: int
    phases: list[PhaseOutcome] = field(default_factory=list)
    tensorboard: dict[str, Path] = field(default_factory=dict)
    resume_step: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(phase.ok for phase in self.phases)

    @property
    def training_wall_s(self) -> float:
        return sum(phase.wall_s for phase in self.phases)


def check_supported(case: Case) -> None:
    if case.test_type not in SUPPORTED_TEST_TYPES:
        raise GateInputError(f"{case.config_file}: TEST_TYPE {case.test_type!r} is not supported by the gate. "
                             f"Fix: use one of {', '.join(SUPPORTED_TEST_TYPES)}")
    iters = case.train_iters  # read before any phase starts: a bad value fails here, not after a run
    if case.test_type == "ckpt-resume" and iters < 2:
        raise GateInputError(f"{case.config_file}: ckpt-resume needs --train-iters >= 2 (it resumes at N/2)")


LAYOUT_FLAGS = (("--tensor-model-parallel-size", "TP"), ("--pipeline-model-parallel-size", "PP"),
                ("--context-parallel-size", "CP"))


def check_layout_fits(case: Case, launch: LaunchOptions, gpus_per_node: int) -> None:
    """Refuse a launch whose ranks cannot form the case's layout, before any phase starts: every
    rank would only fail with the same error, and on a GPU node the cause is the GPU count."""
    sizes = [(name, case.int_arg(flag, 1)) for flag, name in LAYOUT_FLAGS]
    for (name, size), (flag, _) in zip(sizes, LAYOUT_FLAGS):
        if size < 1:
            raise GateInputError(f"{case.config_file}: MODEL_ARGS.{flag} = {size}: a parallel size is at least 1")
    model_parallel = 1
    for _, size in sizes:
        model_parallel *= size
    world = launch.nproc_per_node * launch.nnodes
    if world % model_parallel == 0:
        return
    layout = " x ".join(f"{name}{size}" for name, size in sizes if size > 1)
    launched = f"{launch.nproc_per_node} per node x {launch.nnodes} node(s)"
    if gpus_per_node:
        fix = (f"one rank per GPU, and this node has {gpus_per_node} GPU(s). Fix: run it on nodes with "
               f"{model_parallel} GPUs in all (or more nodes with --nnodes)")
    else:
        fix = f"Fix: --nproc-per-node {model_parallel}, or GOLDTRON.NPROC_PER_NODE in the case"
    raise GateInputError(f"{case.config_file}: the case's layout {layout} needs a multiple of {model_parallel} "
                         f"ranks, but this launch has {world} ({launched}); {fix}")


def resume_step(case: Case) -> int:
    """Megatron's resume point: half of --train-iters, which --save-interval must hit."""
    step = case.train_iters // 2
    interval = case.model_args.get("--save-interval")
    every = whole_number(interval)
    if every is None or every < 1 or step % every:
        raise GateInputError(f"{case.config_file}: ckpt-resume resumes at iteration {step} (N/2), but "
                             f"MODEL_ARGS.--save-interval = {interval!r} does not save there. "
                             f"Fix: set --save-interval to {step} (or a divisor of it)")
    return step


def prepare_resume(checkpoint_dir: Path, step: int) -> None:
    """Drop every checkpoint after `step` and point the tracker at it (Megatron's ckpt-resume)."""
    kept = checkpoint_dir / f"iter_{step:07d}"
    if not kept.is_dir():
        raise GateInputError(f"{checkpoint_dir}: run 1 saved no checkpoint at iteration {step} ({kept.name} is "
                             "missing). Fix: make the trainer honour --save/--save-interval")
    for path in checkpoint_dir.glob("iter_*"):
        if path.is_dir() and int(path.name.split("_")[1]) > step:
            shutil.rmtree(path)
    (checkpoint_dir / TRACKER).write_text(str(step))


def default_nproc(case: Case, gpu_count: int, nnodes: int) -> int:
    """NPROC_PER_NODE, else all GPUs of a GPU machine, else tp*pp*cp spread over the nodes."""
    if case.nproc_per_node:
        return case.nproc_per_node
    if gpu_count:
        return gpu_count
    world = 1
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size"):
        world *= case.int_arg(flag, 1)
    return max(world // nnodes, 1)


def phase_environment(case: Case) -> dict[str, str]:
    env = dict(os.environ)
    env.update(case.env_vars)
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must reach the gate as they are printed
    return env


def _launch(case: Case, options: RunOptions, repeat: RepeatRun, phase: str, slot: int, load_dir: Path,
            save_dir: Path) -> PhaseOutcome:
    phase_dir = options.output_dir / f"repeat_{repeat.index}" / phase
    tensorboard = phase_dir / "tensorboard"
    placeholders = {
        "TENSORBOARD_PATH": str(tensorboard),
        "CHECKPOINT_SAVE_PATH": str(save_dir),
        "CHECKPOINT_LOAD_PATH": str(load_dir),
        "DATA_PATH": str(options.data_path),
        "DATA_CACHE_PATH": str(options.output_dir / "data_cache"),
    }
    trainer_args = model_args_to_argv(case.model_args, placeholders, str(case.config_file))
    suffix = options.launch.log_suffix
    rank_logs = phase_dir / f"ranks{suffix}"
    argv = phase_argv(case.trainer, case.path, trainer_args, options.launch, slot, rank_logs)
    repeat.tensorboard[phase] = tensorboard
    name = options.run_name or case.name
    label = f"{name} repeat {repeat.index} {phase}" if repeat.index > 1 or options.repeats > 1 else f"{name} {phase}"
    try:
        outcome = run_phase(label, argv, phase_environment(case), case.phase_timeout_s,
                            phase_dir / f"torchrun{suffix}.log", rank_logs, options.progress)
    except GateInterrupted as interrupted:  # run_phase killed the tree; say where for run_test
        interrupted.case, interrupted.output_dir = case.name, options.output_dir
        interrupted.phase = label[len(name):].strip()
        raise
    repeat.phases.append(outcome)
    return outcome


def refused_by_trainer(case: Case) -> str | None:
    """goldtron's trainer's refusal of the case's flags, known before any launch (None for other
    trainers, or when it takes them all: the rest is validated by the trainer itself)."""
    if tuple(case.trainer) != DEFAULT_TRAINER:
        return None
    from goldtron.arguments import refused_flags

    return refused_flags(model_args_to_argv(case.model_args, {name: name for name in PLACEHOLDERS},
                                            str(case.config_file)))


def frozen_checkpoint(case: Case, options: RunOptions) -> Path:
    """The stored checkpoint a frozen-resume case loads; its absence is a clear error."""
    frozen = options.frozen_checkpoint or case.frozen_checkpoint
    if frozen is None or not (Path(frozen) / TRACKER).is_file():
        raise GateInputError(f"{case.config_file}: frozen-resume needs a stored checkpoint with {TRACKER}; "
                             f"got {frozen}. Fix: set GOLDTRON.FROZEN_CHECKPOINT or pass --frozen-checkpoint "
                             "(at --size cpu: a checkpoint of the CPU-size model)")
    return Path(frozen)


def run_repeat(case: Case, options: RunOptions, index: int) -> RepeatRun:
    """All phases of one repeat; stops at the first failed phase."""
    check_supported(case)
    repeat = RepeatRun(index)
    checkpoints = options.output_dir / f"repeat_{index}" / "checkpoints"
    if options.launch.is_last_node and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a stale checkpoint would turn run 1 into a resume
    checkpoints.mkdir(parents=True, exist_ok=True)
    slot = (index - 1) * PHASES_PER_REPEAT
    if case.test_type == "frozen-resume":
        _launch(case, options, repeat, "run1", slot, frozen_checkpoint(case, options), checkpoints)
        return repeat
    step = resume_step(case) if case.test_type == "ckpt-resume" else None
    if not _launch(case, options, repeat, "run1", slot, checkpoints, checkpoints).ok or step is None:
        return repeat
    repeat.resume_step = step
    if options.launch.is_last_node:  # one node edits the shared checkpoint folder; the rest wait at rendezvous
        prepare_resume(checkpoints, step)
    _launch(case, options, repeat, "run2", slot + 1, checkpoints, checkpoints)
    return repeat
