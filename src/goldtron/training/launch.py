"""`goldtron launch`: the ranks of one node's `goldtron train`, forked from one process that has
imported torch once, with torchrun's environment and console format but not its start-up cost.

    goldtron launch --nproc-per-node N [--log-dir DIR] -- TRAIN_ARGS...
    goldtron launch --nproc-per-node N [--log-dir DIR] (--script PATH | --module M) -- ARGS...

The second form runs another Python trainer (a script, or a module as `python -m M`) on the
ranks, as `torchrun PATH ARGS` or `torchrun --module M ARGS` would: a test's script, a trainer
that wraps goldtron's (the gate's mutants).

Why: a phase started by torchrun waits for torchrun to import torch.distributed (~1 s) before any
rank starts, then each rank imports torch, DCP and goldtron itself (~1-2 CPU-s each, 4 at once on
a 2-core machine). Here the launcher imports them once and forks the ranks, which start with them
loaded: a 4-rank launch that imports what a checkpointing run needs took 2.1-2.6 s instead of
torchrun's 6.2-6.4 s (docs/performance.md). The ranks compute exactly what they compute under
torchrun (the same code, flags and thread count).

What each rank gets, as from `torchrun --standalone`: RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_RANK, ROLE_WORLD_SIZE, ROLE_NAME, MASTER_ADDR, MASTER_PORT (rank
0 hosts the store), TORCHELASTIC_RUN_ID / _RESTART_COUNT / _MAX_RESTARTS, and OMP_NUM_THREADS=1
unless set. With `--log-dir`, its stdout and stderr go to
`<log-dir>/<run id>/attempt_0/<rank>/{stdout,stderr}.log` and, each line prefixed
`[default<rank>]:`, to this process's stdout and stderr (torchrun's `--redirects 3 --tee 3`
layout, which the gate reads); without, the rank writes to this process's streams (torchrun's
default). When a rank fails, the others get FAILURE_GRACE_S to fail with their
own message, then SIGTERM, then SIGKILL; the first failure is reported with torchrun's "Root Cause"
fields and the launcher exits 1 (0 when every rank exits 0). SIGINT, SIGTERM or SIGHUP to the
launcher stops every rank (SIGTERM, then SIGKILL after KILL_GRACE_S; exit 128 + the signal's number),
and a rank dies with its launcher even when that is SIGKILLed.

Scope: one node, CPU. Forking is safe only while no thread pool or device context exists in the
parent: it only imports (no torch op, no CUDA call), and the ranks are forked before this process
starts a thread. GPUs, several nodes and trainers the gate is not told to fork are launched by
torchrun (gate/launcher.py).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib
import os
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FAILURE_GRACE_S = 2.0  # a bad flag fails every rank within a second: each may say so itself
KILL_GRACE_S = 5.0
# The ranks are polled, not waited for in a blocking waitpid: a stop signal that lands just before
# that call (after Python's last check for signals) would leave its handler unrun until a rank
# ends, and the launcher deaf to it (seen in 1 launch in 20 of test_launch's signal test). A poll
# costs ~20 us; the price is up to POLL_S between a rank's end and the launcher's.
POLL_S = 0.02
# What a rank of `goldtron train` imports: loaded here once, inherited by every rank. A module not
# listed is imported by the rank itself, which costs time, not correctness.
PRELOADED = ("torch", "torch.distributed", "goldtron.training.build", "goldtron.training.loop",
             "goldtron.model.gpt", "goldtron.parallel.schedule", "goldtron.data.provider",
             "goldtron.training.checkpointer", "goldtron.training.optimizer")
CHECKPOINT_MODULES = ("torch.distributed.checkpoint",)  # ~1.5 s a process: only for a run that saves or loads
CHECKPOINT_FLAGS = ("--save", "--load")
PR_SET_PDEATHSIG = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goldtron launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, required=True, help="ranks to start on this node")
    parser.add_argument("--log-dir", type=Path, help="each rank's stdout/stderr under DIR/<run id>/attempt_0/<rank>/")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--script", type=Path, help="run this Python script on the ranks instead of `goldtron train`")
    target.add_argument("--module", help="run this module (as `python -m MODULE`) on the ranks instead")
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, world: int, port: int, run_id: str) -> dict[str, str]:
    """What torchrun --standalone gives rank `rank` of `world` on one node."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world),
            "ROLE_NAME": "default", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """SIGTERM or SIGHUP reached the launcher: its ranks are stopped before it leaves."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal = signal_number


def _raise_stopped(signal_number, _frame) -> None:
    raise Stopped(signal_number)


@contextmanager
def _stop_signals_deferred():
    """Hold SIGINT and the STOP_SIGNALS back while the block runs; one that came is delivered (and
    raises) as the block ends. Why: raised inside `Thread.start`, it leaves the thread half
    registered, and that pump dies with a KeyError (seen when a caller signals as soon as a first
    line is relayed). The threads started inside keep the mask: the signal goes to this thread."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *STOP_SIGNALS})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class Rank:
    index: int
    pid: int
    stdout_fd: int | None  # the read ends of its pipes (None: it writes to our streams directly)
    stderr_fd: int | None
    exit_code: int | None = None
    ended_at: float | None = None


def _train_main(train_args: list[str]) -> int:
    from goldtron.training.main import main

    sys.argv = ["goldtron", "train", *train_args]
    return main(train_args)


def run_script(script: Path, args: list[str]) -> int:
    """A rank's main for `--script`: the script as `python SCRIPT ARGS` runs it (its folder first on
    sys.path, `__name__ == "__main__"`); its SystemExit is the rank's exit code."""
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")
    return 0


def run_module(module: str, args: list[str]) -> int:
    """A rank's main for `--module`: as `python -m MODULE ARGS`."""
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def _run_rank(rank: int, environment: dict[str, str], stdout_fd: int | None, stderr_fd: int | None,
              train_args: list[str], rank_main):
    """In the forked child: become the rank and never return."""
    code = 1
    try:
        try:  # die with the launcher, even when it is SIGKILLed (no orphan rank waiting on a store)
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if stdout_fd is not None:
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
        sys.stdout.reconfigure(line_buffering=True)  # a pipe, often: each progress line as it is printed
        os.environ.update(environment)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_DFL)
        code = rank_main(train_args)  # each rank main sets its own sys.argv
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - a rank's crash is reported by its traceback and exit code
        traceback.print_exc()
    finally:
        from goldtron.training.fast_exit import exit_now

        exit_now(code)  # as `python -m goldtron train` leaves: threads joined, atexit run, streams flushed


def _pump(fd: int, rank: int, log_file: Path, console, console_lock: threading.Lock) -> None:
    """One stream of one rank, line by line, into its log file and (prefixed) onto the console."""
    log = open(log_file, "wb")
    prefix = f"[default{rank}]:".encode()
    try:
        with os.fdopen(fd, "rb", buffering=0) as stream:
            pending = b""
            while chunk := stream.read(65536):
                log.write(chunk)
                log.flush()
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                if lines:
                    with console_lock:
                        console.write(b"".join(prefix + line + b"\n" for line in lines))
                        console.flush()
            if pending:
                with console_lock:
                    console.write(prefix + pending + b"\n")
                    console.flush()
    finally:
        log.close()


def _signal_all(ranks: list[Rank], sig: int) -> None:
    for rank in ranks:
        if rank.exit_code is None:
            try:
                os.kill(rank.pid, sig)
            except ProcessLookupError:
                pass


def _reap(ranks: list[Rank]) -> bool:
    """Record the exit of every rank that ended; True if one did. Never blocks: see POLL_S."""
    by_pid = {rank.pid: rank for rank in ranks if rank.exit_code is None}
    reaped = False
    while by_pid:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in by_pid:
            rank = by_pid.pop(pid)
            rank.exit_code, rank.ended_at = os.waitstatus_to_exitcode(status), time.monotonic()
            reaped = True
    return reaped


def _failed(ranks: list[Rank]) -> list[Rank]:
    return [rank for rank in ranks if rank.exit_code not in (None, 0)]


def _wait_all(ranks: list[Rank], deadline: float = float("inf"), until_a_failure: bool = False) -> None:
    """Poll (POLL_S) until every rank has ended, `deadline` passes, or (if asked) one has failed."""
    while any(rank.exit_code is None for rank in ranks) and time.monotonic() < deadline:
        if not _reap(ranks):
            time.sleep(POLL_S)
        elif until_a_failure and _failed(ranks):
            return


def _supervise(ranks: list[Rank]) -> Rank | None:
    """Wait for every rank; at the first failure, end the others. The first failed rank, or None."""
    _wait_all(ranks, until_a_failure=True)
    failed = _failed(ranks)
    if not failed:
        return None
    first_failure = min(failed, key=lambda rank: rank.ended_at)
    _wait_all(ranks, time.monotonic() + FAILURE_GRACE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_all(ranks, sig)
        _wait_all(ranks, time.monotonic() + KILL_GRACE_S)
    return first_failure


def _report(failure: Rank, ranks: list[Rank], rank_dir) -> None:
    others = ", ".join(f"rank {rank.index}: {rank.exit_code}" for rank in ranks if rank is not failure)
    log = rank_dir(failure.index)
    where = f"\n  log       : {log}" if log is not None else ""
    print(f"goldtron launch: a rank failed; the others were ended ({others})\n"
          f"Root Cause (first observed failure):\n"
          f"  rank      : {failure.index} (local_rank: {failure.index})\n"
          f"  exitcode  : {failure.exit_code}{where}", file=sys.stderr, flush=True)


def launch(nproc: int, train_args: list[str], log_dir: Path | None, rank_main=_train_main) -> int:
    """Run `rank_main(train_args)` (goldtron train's, unless a test gives its own) in `nproc` forked
    ranks; 0 when every rank returns 0, 1 after a failure, 128 + N when signal N stopped it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does for several ranks; read when torch loads
    modules = PRELOADED + (CHECKPOINT_MODULES if any(flag in train_args for flag in CHECKPOINT_FLAGS) else ())
    for module in modules:
        importlib.import_module(module)
    run_id = f"goldtron_{os.getpid()}"
    port = _free_port()

    def rank_dir(rank: int) -> Path | None:
        return None if log_dir is None else log_dir / run_id / "attempt_0" / str(rank)

    sys.stdout.flush()
    sys.stderr.flush()
    ranks: list[Rank] = []
    for rank in range(nproc):
        out_read = out_write = err_read = err_write = None
        if log_dir is not None:  # tee through pipes; without logs a rank writes to our streams, as under torchrun
            rank_dir(rank).mkdir(parents=True, exist_ok=True)
            out_read, out_write = os.pipe()
            err_read, err_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in [out_read, err_read, *(fd for other in ranks for fd in (other.stdout_fd, other.stderr_fd))]:
                if fd is not None:
                    os.close(fd)
            _run_rank(rank, rank_environment(rank, nproc, port, run_id), out_write, err_write, train_args, rank_main)
        if log_dir is not None:
            os.close(out_write)
            os.close(err_write)
        ranks.append(Rank(rank, pid, out_read, err_read))

    # After the forks (the ranks keep the default handlers), before any rank's line is relayed (a
    # caller that waits for one then signals us is handled).
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _raise_stopped)
    lock = threading.Lock()  # one line at a time on the console, whichever rank and stream
    pumps = []
    for rank in ranks:
        if rank.stdout_fd is None:
            continue
        for fd, name, console in ((rank.stdout_fd, "stdout.log", sys.stdout.buffer),
                                  (rank.stderr_fd, "stderr.log", sys.stderr.buffer)):
            pumps.append(threading.Thread(target=_pump, args=(fd, rank.index, rank_dir(rank.index) / name, console,
                                                              lock), daemon=True))
    try:
        with _stop_signals_deferred():
            for pump in pumps:
                pump.start()
        failure = _supervise(ranks)
    except (KeyboardInterrupt, Stopped) as stop:  # as torchrun: SIGTERM to the ranks, then SIGKILL
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _signal_all(ranks, sig)
            _wait_all(ranks, time.monotonic() + KILL_GRACE_S)
        return 128 + (stop.signal if isinstance(stop, Stopped) else signal.SIGINT)
    for pump in pumps:
        pump.join(timeout=KILL_GRACE_S)  # a rank's last lines reach the log before the verdict
    if failure is None:
        return 0
    _report(failure, ranks, rank_dir)
    return 1


def main(argv: list[str]) -> int:
    own, train_args = _split(argv)
    args = _parser().parse_args(own)
    if args.nproc_per_node < 1:
        print(f"goldtron launch: --nproc-per-node {args.nproc_per_node}: must be at least 1", file=sys.stderr)
        return 2
    if args.script is not None and not args.script.is_file():
        print(f"goldtron launch: --script {args.script}: no such file", file=sys.stderr)
        return 2
    rank_main = _train_main
    if args.script is not None:
        rank_main = functools.partial(run_script, args.script)
    elif args.module is not None:
        rank_main = functools.partial(run_module, args.module)
    return launch(args.nproc_per_node, train_args, args.log_dir, rank_main)
