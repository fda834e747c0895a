"""`goldtron launch` (training/launch.py): torchrun's contract from forked ranks.

The probe ranks (tests/support/launch_probe.py) check the launcher's own behaviour in ~2 s a
launch; one real 4-rank TP2 x PP2 run checks that forked ranks train exactly as torchrun's do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from goldtron.training import launch as launch_module

from support.torchrun import NO_DROPOUT, TINY_MODEL, launch_prefix, layout_flags, read_metrics_file, torchrun_prefix

PROBE = Path(__file__).resolve().parents[1] / "support" / "launch_probe.py"
TIMEOUT_S = 120


def probe(tmp_path: Path, nproc: int, mode: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    return subprocess.run([sys.executable, str(PROBE), str(tmp_path / "logs"), str(nproc), mode], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env)


def rank_log(tmp_path: Path, rank: int, name: str) -> str:
    (path,) = (tmp_path / "logs").glob(f"*/attempt_0/{rank}/{name}")
    return path.read_text()


def test_each_rank_gets_torchruns_environment_and_its_own_prefixed_log(tmp_path):
    done = probe(tmp_path, 3, "ok")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    environments = {}
    for rank in range(3):
        (line,) = [line for line in lines if line.startswith(f"[default{rank}]:{{")]
        environments[rank] = json.loads(line[len(f"[default{rank}]:"):])
        # A last line without its newline still reaches the console (completed) and the log (as written).
        assert f"[default{rank}]:last words of rank {rank}" in lines
        assert rank_log(tmp_path, rank, "stdout.log").endswith(f"last words of rank {rank}")
    assert [environments[rank]["RANK"] for rank in range(3)] == ["0", "1", "2"]
    assert {environments[rank]["LOCAL_RANK"] for rank in range(3)} == {"0", "1", "2"}
    for environment in environments.values():
        assert environment["WORLD_SIZE"] == environment["LOCAL_WORLD_SIZE"] == "3"
        assert environment["MASTER_ADDR"] == "127.0.0.1" and int(environment["MASTER_PORT"]) > 0
        assert environment["OMP_NUM_THREADS"] == "1"  # unset before: torchrun's default for several ranks
    assert len({environment["MASTER_PORT"] for environment in environments.values()}) == 1


def test_a_failing_rank_is_named_and_the_waiting_ranks_are_ended(tmp_path):
    started = time.monotonic()
    done = probe(tmp_path, 3, "crash")
    assert done.returncode == 1
    # Bounded: the grace for the others' own failure, then SIGTERM (the waiting ranks sleep 120 s).
    assert time.monotonic() - started < 60
    assert "Root Cause (first observed failure)" in done.stderr
    assert "rank      : 1 (local_rank: 1)" in done.stderr and "exitcode  : 3" in done.stderr
    assert "[default1]:boom: injected failure on rank 1" in done.stderr  # a rank's stderr stays stderr
    assert "boom: injected failure on rank 1" in rank_log(tmp_path, 1, "stderr.log")
    pids = [int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines() if "waiting pid" in line]
    assert len(pids) == 2
    for pid in pids:  # ended, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_signal_to_the_launcher_stops_every_rank(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    launcher = subprocess.Popen([sys.executable, str(PROBE), str(tmp_path / "logs"), "2", "wait"], env=env,
                                stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        while len(pids) < 2:  # both ranks are up and waiting
            line = launcher.stdout.readline()
            assert line, "the launcher ended before its ranks said they wait"
            if "waiting pid" in line:
                pids.append(int(line.rsplit(" ", 1)[1]))
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=TIMEOUT_S) == 128 + signal.SIGTERM
    finally:
        launcher.kill()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_signal_taken_by_another_thread_still_stops_the_launcher():
    """The kernel may run a signal's C handler in any thread, or just before the main thread blocks;
    either way the Python handler runs only when the main thread next executes. Here the signal is
    aimed at a helper thread, deterministically: a launcher asleep in a blocking waitpid would wait
    for its rank to end (10 s) and then return as if nothing came; polling raises Stopped at once."""
    rank_pid = os.fork()
    if rank_pid == 0:  # a rank that waits: it only sleeps, so forking pytest is safe
        time.sleep(10)
        os._exit(0)
    previous = signal.signal(signal.SIGTERM, launch_module._raise_stopped)
    helper = threading.Thread(target=lambda: (time.sleep(0.3), signal.pthread_kill(threading.get_ident(),
                                                                                    signal.SIGTERM)))
    try:
        helper.start()
        with pytest.raises(launch_module.Stopped):  # before the rank's 10 s are up, or not at all
            launch_module._supervise([launch_module.Rank(0, rank_pid, None, None)])
    finally:
        helper.join()
        signal.signal(signal.SIGTERM, previous)
        os.kill(rank_pid, signal.SIGKILL)
        os.waitpid(rank_pid, 0)


def test_every_rank_reports_its_own_flag_error(tmp_path):
    done = probe(tmp_path, 3, "config")
    assert done.returncode == 1
    assert "exitcode  : 2" in done.stderr
    for rank in range(3):  # rank 0 fails last: the grace after the first failure lets it speak
        assert f"[default{rank}]:goldtron train: error (rank {rank}): --bad-flag is not a flag" in done.stderr


def test_launch_refuses_a_bad_process_count():
    done = subprocess.run([sys.executable, "-m", "goldtron", "launch", "--nproc-per-node", "0", "--", "--help"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2 and "--nproc-per-node 0: must be at least 1" in done.stderr


def test_forked_ranks_train_bit_for_bit_as_torchruns(tmp_path):
    flags = [*TINY_MODEL, *NO_DROPOUT, *layout_flags(tp=2, pp=2), "--train-iters", "4"]
    launchers = {"torchrun": [*torchrun_prefix(4), "--module", "goldtron", "train"],
                 "fork": [*launch_prefix(4), "--"]}
    for name, prefix in launchers.items():
        env = dict(os.environ, GOLDTRON_METRICS_FILE=str(tmp_path / f"{name}.jsonl"), OMP_NUM_THREADS="1")
        done = subprocess.run([*prefix, *flags], capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
        assert done.returncode == 0, name + done.stdout[-3000:] + done.stderr[-3000:]
    by_torchrun = read_metrics_file(tmp_path / "torchrun.jsonl")
    forked = read_metrics_file(tmp_path / "fork.jsonl")
    assert len(forked) == len(by_torchrun) == 4
    for ours, theirs in zip(forked, by_torchrun):
        ours.pop("iteration_time"), theirs.pop("iteration_time")
        assert ours == theirs  # the same code, flags and thread count: the same bits


RANK_SCRIPT = """import os, sys
print(f"{__name__} argv={sys.argv[1:]} own-folder-first={sys.path[0] == os.path.dirname(os.path.abspath(__file__))}")
sys.exit(4 if os.environ["RANK"] == "1" and "--fail" in sys.argv else 0)
"""


def test_a_python_script_or_module_runs_on_the_ranks_as_under_torchrun(tmp_path):
    """`--script` / `--module`: another Python trainer (the gate's mutants, test scripts), run as
    `python SCRIPT ARGS` / `python -m MODULE ARGS` would; its exit code is the rank's."""
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    launch = launch_prefix(2)
    script = subprocess.run([*launch, "--script", str(tmp_path / "rank_script.py"), "--", "--flag", "x"],
                            capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert script.returncode == 0, script.stderr
    assert script.stdout.count("__main__ argv=['--flag', 'x'] own-folder-first=True") == 2, script.stdout
    module = subprocess.run([*launch, "--module", "rank_script", "--", "--fail"], capture_output=True, text=True,
                            timeout=TIMEOUT_S, env=env)
    assert module.returncode == 1
    assert "__main__ argv=['--fail']" in module.stdout
    assert "rank      : 1 (local_rank: 1)" in module.stderr and "exitcode  : 4" in module.stderr
    missing = subprocess.run([*launch, "--script", str(tmp_path / "nowhere.py")], capture_output=True, text=True,
                             timeout=TIMEOUT_S, env=env)
    assert missing.returncode == 2 and "--script" in missing.stderr and "nowhere.py" in missing.stderr
