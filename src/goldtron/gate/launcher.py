"""Launch one training phase: argv, environment, timeout, per-rank logs.

Two launchers, one contract (the ranks' environment, `<phase>/ranks/*/attempt_0/<rank>/` logs,
a `[default<rank>]:`-prefixed console stream, torchrun's "Root Cause" fields on a failure):
- `fork`: `goldtron launch` (training/launch.py) forks the ranks after one import of torch, on
  one node: a 4-rank phase starts ~4 s sooner on a 2-core machine;
- `torchrun`: any trainer, several nodes, GPUs.
`--launcher` on `goldtron test` picks one. `auto` (the default) forks goldtron's own trainer on one
node without GPUs and gives everything else to torchrun; `fork` also starts another Python trainer
(`TRAINER: [python, SCRIPT...]` or `[python, -m, MODULE...]`), for those who know it forks safely.

Nothing goes through a shell: the trainer's argv is a list, so a value in a case's yaml is
only ever an argument, never executed. The merged console stream goes to `<phase>/torchrun.log`
(its name kept for either launcher) and feeds the progress display. On a timeout, or when a stop
signal reaches the gate (GateInterrupted, see interrupts.py), the whole process tree (the launcher
and its ranks) is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from goldtron.gate.case import DEFAULT_TRAINER
from goldtron.gate.errors import GateInputError
from goldtron.gate.interrupts import GateInterrupted
from goldtron.gate.progress import parse_progress
from goldtron.trainer_contract import EXIT_CONFIG_ERROR

PYTHON_NAMES = ("python", "python3")
FORK, TORCHRUN = "fork", "torchrun"
LAUNCHERS = ("auto", FORK, TORCHRUN)
KILL_GRACE_S = 5.0
LAST_LINES = 15


@dataclass
class LaunchOptions:
    """Where and how many: one node (`--standalone`) or one of `nnodes` nodes.

    Multi-node uses torchrun's static rendezvous: node `node_rank` hosts global ranks
    node_rank*nproc ... so the last node holds the last rank (the one writing TensorBoard).
    Each launch uses its own port (endpoint port + launch index) so a late node can never
    join the previous phase's store.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    launcher: str = TORCHRUN  # FORK or TORCHRUN (choose_launcher resolves "auto")

    def __post_init__(self):
        if self.launcher not in (FORK, TORCHRUN):
            raise GateInputError(f"launcher {self.launcher!r}: expected {FORK} or {TORCHRUN}")
        if self.launcher == FORK and self.nnodes > 1:
            raise GateInputError("--launcher fork starts the ranks of one node; with --nnodes > 1 use torchrun")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise GateInputError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
        if not 0 <= self.node_rank < self.nnodes:
            raise GateInputError(f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        if self.rdzv_endpoint and not re.fullmatch(r"[^:\s]+:\d+", self.rdzv_endpoint):
            raise GateInputError(f"--rdzv-endpoint {self.rdzv_endpoint!r}: expected HOST:PORT, e.g. 10.0.0.1:29500")

    @property
    def log_suffix(self) -> str:
        """Nodes sharing an output folder keep separate logs."""
        return "" if self.nnodes == 1 else f"_node{self.node_rank}"

    @property
    def is_last_node(self) -> bool:
        return self.node_rank == self.nnodes - 1

    def rendezvous_flags(self, launch_index: int) -> list[str]:
        if self.nnodes == 1:
            return ["--standalone"]
        host, port = self.rdzv_endpoint.rsplit(":", 1)
        return ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank), "--rdzv-backend", "static",
                "--rdzv-endpoint", f"{host}:{int(port) + launch_index}"]


def choose_launcher(requested: str, trainer: tuple[str, ...], nnodes: int, gpus: int) -> str:
    """`auto`: fork for goldtron's own trainer on one node without GPUs (forking after CUDA is
    initialised is unsafe, and the GPU path is checked under torchrun), torchrun otherwise. `fork`
    asked for by name takes any Python trainer (python_trainer checks it is one): a trainer goldtron
    does not know is forked only when the user says so."""
    if requested not in LAUNCHERS:
        raise GateInputError(f"--launcher {requested!r}: expected one of {', '.join(LAUNCHERS)}")
    if requested != "auto":
        return requested
    return FORK if tuple(trainer) == DEFAULT_TRAINER and nnodes == 1 and gpus == 0 else TORCHRUN


@dataclass(frozen=True)
class PythonTrainer:
    """A case's TRAINER once checked: a module (`python -m MODULE`) or a script, and its fixed
    arguments; each launcher names it in its own way."""

    module: str | None
    script: Path | None
    fixed: tuple[str, ...]

    def torchrun_target(self) -> list[str]:
        return ["--module", self.module, *self.fixed] if self.module else [str(self.script), *self.fixed]

    def launch_target(self) -> list[str]:
        """`goldtron launch`'s flags for it, up to its `--`."""
        return ["--module", self.module] if self.module else ["--script", str(self.script)]


def python_trainer(trainer: tuple[str, ...], case_dir: Path) -> PythonTrainer:
    """TRAINER must start with the Python interpreter (`python`), then `-m MODULE` or a script
    path (relative paths are relative to the case folder), then any fixed arguments."""
    parts = list(trainer)
    if len(parts) < 2 or Path(parts[0]).name not in PYTHON_NAMES + (Path(sys.executable).name,):
        raise GateInputError(f"GOLDTRON.TRAINER {parts!r}: expected [python, -m, MODULE, ...] or "
                             "[python, SCRIPT.py, ...]; torchrun starts the interpreter itself")
    if parts[1] == "-m":
        if len(parts) < 3:
            raise GateInputError(f"GOLDTRON.TRAINER {parts!r}: -m needs a module name")
        return PythonTrainer(parts[2], None, tuple(parts[3:]))
    script = Path(parts[1])
    script = script if script.is_absolute() else (case_dir / script)
    if not script.is_file():
        raise GateInputError(f"GOLDTRON.TRAINER: script {script} not found. Fix: give an absolute path or "
                             "one relative to the case folder")
    return PythonTrainer(None, script, tuple(parts[2:]))


def trainer_target(trainer: tuple[str, ...], case_dir: Path) -> list[str]:
    """The case's TRAINER argv prefix as torchrun's target: `--module M args` or `SCRIPT args`."""
    return python_trainer(trainer, case_dir).torchrun_target()


def torchrun_argv(target: list[str], trainer_args: list[str], launch: LaunchOptions, launch_index: int,
                  rank_log_dir: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(launch.nproc_per_node),
            *launch.rendezvous_flags(launch_index),
            # Keep every rank's stdout/stderr in its own file and still stream them to us.
            "--log-dir", str(rank_log_dir), "--redirects", "3", "--tee", "3",
            *target, *trainer_args]


def fork_argv(trainer: tuple[str, ...], case_dir: Path, trainer_args: list[str], launch: LaunchOptions,
              rank_log_dir: Path) -> list[str]:
    """`goldtron launch` of goldtron's trainer (its default), or of the case's Python script or module."""
    target, fixed = [], ()
    if tuple(trainer) != DEFAULT_TRAINER:
        python = python_trainer(trainer, case_dir)
        target, fixed = python.launch_target(), python.fixed
    return [sys.executable, "-m", "goldtron", "launch", "--nproc-per-node", str(launch.nproc_per_node),
            "--log-dir", str(rank_log_dir), *target, "--", *fixed, *trainer_args]


def phase_argv(trainer: tuple[str, ...], case_dir: Path, trainer_args: list[str], launch: LaunchOptions,
               launch_index: int, rank_log_dir: Path) -> list[str]:
    """One phase's command line, by the launcher `launch` names."""
    if launch.launcher == FORK:
        return fork_argv(trainer, case_dir, trainer_args, launch, rank_log_dir)
    return torchrun_argv(trainer_target(trainer, case_dir), trainer_args, launch, launch_index, rank_log_dir)


@dataclass
class PhaseOutcome:
    name: str
    argv: list[str]
    returncode: int
    wall_s: float
    log_path: Path
    rank_log_dir: Path
    timed_out: bool = False
    failed_rank: int | None = None
    rank_exit_code: int | None = None
    last_lines: list[str] = field(default_factory=list)
    last_iteration: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def config_error(self) -> bool:
        """The trainer rejected its configuration (its exit code 2)."""
        return self.rank_exit_code == EXIT_CONFIG_ERROR

    def describe_failure(self) -> str:
        if self.timed_out:
            head = f"phase {self.name} timed out (no exit after the phase timeout; last iteration {self.last_iteration})"
        elif self.config_error:
            head = f"phase {self.name}: the trainer rejected the configuration (rank {self.failed_rank} exit code 2)"
        else:
            who = f"rank {self.failed_rank}" if self.failed_rank is not None else "a rank"
            code = self.rank_exit_code if self.rank_exit_code is not None else self.returncode
            head = f"phase {self.name} crashed: {who} exited with code {code}"
        tail = "\n".join(f"    {line}" for line in self.last_lines)
        return f"{head}; log {self.log_path}" + (f"\n  last lines of rank {self.failed_rank}:\n{tail}" if tail else "")


def _descendants(pid: int) -> list[int]:
    """All child processes of `pid`, recursively (Linux /proc); ranks may sit in their own sessions."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for children_file in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(child) for child in children_file.read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            frontier.extend(children)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGTERM the launcher and every descendant, then SIGKILL what is left: bounded by 2 x KILL_GRACE_S."""
    victims: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Walk again before each round: a rank the launcher was still starting is a descendant now.
        victims = sorted(set(victims) | set(_descendants(process.pid)))
        for pid in [process.pid, *victims]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=KILL_GRACE_S)
            if sig == signal.SIGTERM:
                victims = [pid for pid in victims if Path(f"/proc/{pid}").exists()]
                if not victims:
                    return
        except subprocess.TimeoutExpired:
            continue


_ROOT_RANK = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_ROOT_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")


def _rank_tail(rank_log_dir: Path, local_rank: int) -> list[str]:
    """The last lines a failing rank wrote (stderr first: that is where tracebacks go)."""
    for name in ("stderr.log", "stdout.log"):
        logs = sorted(rank_log_dir.glob(f"*/attempt_*/{local_rank}/{name}"), key=os.path.getmtime)
        if logs:
            lines = [line for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                return lines[-LAST_LINES:]
    return []


def run_phase(name: str, argv: list[str], env: dict[str, str], timeout_s: float, log_path: Path,
              rank_log_dir: Path, progress) -> PhaseOutcome:
    """Run one phase to completion or timeout; the console stream goes to the log and `progress`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    outcome = PhaseOutcome(name, argv, 0, 0.0, log_path, rank_log_dir)
    progress.start(name)
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            for line in process.stdout:
                log.write(line)
                progress.update(line)
                parsed = parse_progress(line)
                if parsed is not None:
                    outcome.last_iteration = parsed.iteration

        reader = threading.Thread(target=pump, daemon=True)
        try:
            reader.start()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                outcome.timed_out = True
                _kill_tree(process)
        except GateInterrupted as interrupted:
            # Also when the signal lands inside the timeout's kill: kill again, it is idempotent.
            _kill_tree(process)
            if reader.is_alive():
                reader.join(timeout=KILL_GRACE_S)
            progress.finish(f"INTERRUPTED ({interrupted.signal_name})")
            interrupted.phase, interrupted.last_iteration = name, outcome.last_iteration
            raise
        reader.join(timeout=KILL_GRACE_S)
    outcome.returncode = process.returncode
    outcome.wall_s = time.monotonic() - started
    if not outcome.ok:
        _explain_failure(outcome)
    progress.finish("done" if outcome.ok else ("TIMED OUT" if outcome.timed_out else f"FAILED (exit {outcome.returncode})"))
    return outcome


def _explain_failure(outcome: PhaseOutcome) -> None:
    text = outcome.log_path.read_text(errors="replace")
    root = text.rfind("Root Cause")
    rank_match = _ROOT_RANK.search(text, root if root >= 0 else 0)
    exit_match = _ROOT_EXIT.search(text, root if root >= 0 else 0)
    local_rank = None
    if rank_match:
        outcome.failed_rank, local_rank = int(rank_match.group(1)), int(rank_match.group(2))
    if exit_match:
        outcome.rank_exit_code = int(exit_match.group(1))
    if local_rank is not None:
        outcome.last_lines = _rank_tail(outcome.rank_log_dir, local_rank)
    if not outcome.last_lines:
        outcome.last_lines = [line for line in text.splitlines() if line.strip()][-LAST_LINES:]
