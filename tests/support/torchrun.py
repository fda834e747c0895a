"""Run `goldtron train` on several gloo ranks (CPU) from tests, with a timeout, and read what it logged.

Every distributed test goes through `run_train` or `run_script`: a hard timeout (a dead or hung rank
fails the test instead of hanging the suite) and one thread per rank (fixed thread count = fixed
bits). The ranks are forked by goldtron's launcher (`goldtron launch`, training/launch.py: torch
imported once, the launch seconds sooner), as the gate starts goldtron's trainer; a test that
needs torchrun's own behaviour (its monitor interval) gets torchrun, which keeps `torchrun ...
goldtron train`, the README's way, under test too (and tests/unit/test_launch.py holds the two
launchers' runs bitwise equal).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# A GPT small enough for 4 ranks on 2 cores, large enough to have every part (TP-divisible heads,
# PP-divisible layers, vocab padding: NullTokenizer 1000 -> 1001 real ids, padded to 1024/1152...).
TINY_MODEL = [
    "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32",
    "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "2",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
    "--log-interval", "1", "--log-num-zeros-in-grad", "--log-params-norm",
    "--deterministic-mode", "--torch-threads", "1", "--eval-iters", "0",
]
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layout_flags(tp: int = 1, pp: int = 1) -> list[str]:
    return ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]


# torchrun ends the other ranks at its first look after one rank exits. A test that wants every
# rank's own error message gives the slower ranks (still importing torch on a loaded machine)
# this long to reach their error first.
EVERY_RANK_MONITOR_INTERVAL_S = 5.0
# A bad flag stops a rank before it imports torch: ~0.4 s alone, ~1 s for 4 ranks on 2 cores.
FLAG_ERROR_MONITOR_INTERVAL_S = 2.5


def torchrun_prefix(nproc: int, monitor_interval: float | None = None) -> list[str]:
    monitor = [] if monitor_interval is None else ["--monitor-interval", str(monitor_interval)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *monitor]


def launch_prefix(nproc: int) -> list[str]:
    """`goldtron launch` of `nproc` forked ranks, up to its target flags."""
    return [sys.executable, "-m", "goldtron", "launch", "--nproc-per-node", str(nproc)]


def _run_ranks(cmd: list[str], what: str, timeout: float, env: dict | None, check: bool) -> subprocess.CompletedProcess:
    """One launch of ranks with one thread each (fixed thread count = fixed bits) and a hard timeout;
    with `check`, a non-zero exit fails the test with the output's tail."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"{what} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def run_train(nproc: int, flags: list[str], timeout: float = 240, env: dict | None = None,
              check: bool = True, monitor_interval: float | None = None) -> subprocess.CompletedProcess:
    """`goldtron train FLAGS` on `nproc` ranks: forked, or under torchrun when `monitor_interval` is
    given (how long torchrun lets the other ranks run once one has ended)."""
    if monitor_interval is None:
        cmd = [*launch_prefix(nproc), "--", *flags]
    else:
        cmd = [*torchrun_prefix(nproc, monitor_interval), "--module", "goldtron", "train", *flags]
    return _run_ranks(cmd, "training", timeout, env, check)


def read_scalars(tb_dir: str | Path) -> dict[str, dict[int, float]]:
    """All scalars of a TensorBoard folder: {tag: {step: value}} (the last write of a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def read_metrics_file(path: str | Path) -> list[dict]:
    """The per-step JSON lines written under GOLDTRON_METRICS_FILE (full float64 precision)."""
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train_and_read(tmp_path: Path, name: str, nproc: int, flags: list[str], **kwargs) -> list[dict]:
    """Run training with a metrics file under tmp_path/name and return its per-step records."""
    out = tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    env = dict(kwargs.pop("env", None) or {}, GOLDTRON_METRICS_FILE=str(metrics))
    run_train(nproc, flags, env=env, **kwargs)
    return read_metrics_file(metrics)


BATCH_WORKER = Path(__file__).with_name("batch_worker.py")


def train_batches_and_read(out_dir: Path, runs: dict[str, tuple[int, list[str]]],
                           timeout_per_run: float = 60) -> dict[str, list[dict]]:
    """{name: (processes, flags)} -> {name: per-step records}: the runs of each process count in
    one launch (batch_worker.py), each with its own metrics file under out_dir/name."""
    import json

    by_nproc: dict[int, dict] = {}
    for name, (nproc, flags) in runs.items():
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        by_nproc.setdefault(nproc, {})[name] = {"flags": flags, "metrics": str(out_dir / name / "metrics.jsonl")}
    launches = []
    for nproc, batch in by_nproc.items():
        spec = out_dir / f"batch-{nproc}.json"
        spec.write_text(json.dumps({"runs": batch}))
        launches.append((nproc, functools.partial(run_script, nproc, BATCH_WORKER, [str(spec)],
                                                  timeout=60 + timeout_per_run * len(batch))))
    raise_first(in_lanes(launches))
    # A run that loads a checkpoint at its --train-iters takes no step (it only saves): no records.
    return {name: read_metrics_file(path) if (path := out_dir / name / "metrics.jsonl").exists() else []
            for name in runs}


NOT_RUN = object()  # in_lanes' outcome of a launch after a failed one in its lane


def in_lanes(launches: list[tuple[int, Callable[[], object]]]) -> list[object]:
    """Run [(processes, launch)] in one lane per process count, the lanes side by side (threads),
    each in order, and give each launch's outcome: its return value, the exception it raised, or
    NOT_RUN after a failure in its lane. Tiny runs are bound by gloo's wake-ups, not compute, and a
    one-process run has one thread: a launch alone leaves much of the 2 cores idle. Measured on the
    Intel Xeon AVX512 kind, one launch each: 8 tiny one-process runs + 6 tiny TP2 x PP2 runs
    40.5 / 39.6 s in turn, 33.4 / 31.0 s side by side; 6 TP2 runs + 6 TP2 x PP2 runs 58.2 / 63.5 s
    in turn, 50.0 / 50.1 s side by side. Fixed threads per rank keep every run's bits whatever runs
    beside it; no two launches given together write what the other reads."""
    outcomes: list[object] = [NOT_RUN] * len(launches)

    def lane(indices: list[int]) -> None:
        for index in indices:
            try:
                outcomes[index] = launches[index][1]()
            except BaseException as error:  # noqa: BLE001 - handed to the caller with the others
                outcomes[index] = error
                return

    lanes: dict[int, list[int]] = {}
    for index, (nproc, _) in enumerate(launches):
        lanes.setdefault(nproc, []).append(index)
    threads = [threading.Thread(target=lane, args=(indices,), daemon=True) for indices in lanes.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def raise_first(outcomes: list[object]) -> None:
    error = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
    if error is not None:
        raise error


def batched_log(out_dir: Path, name: str) -> str:
    """What run `name` of train_batches_and_read(out_dir, ...) printed, all ranks, rank order."""
    logs = sorted((out_dir / name).glob("stdout.rank*.log"), key=lambda path: int(path.stem.split("rank")[1]))
    return "".join(path.read_text() for path in logs)


def run_script(nproc: int, script: str | Path, args: list[str] | None = None, timeout: float = 180,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a test script on `nproc` forked gloo ranks; fails the test on a non-zero exit or the timeout."""
    cmd = [*launch_prefix(nproc), "--script", str(script), "--", *(args or [])]
    return _run_ranks(cmd, str(script), timeout, env, check=True)
