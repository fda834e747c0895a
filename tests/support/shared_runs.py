"""The session's independent training runs: those of one process count in one torchrun launch.

A launch costs more than a tiny run: measured on the 2-core AMD kind, a 4-rank launch of one
10-step run took 16.4 s and of two 19.9 s (one process: 6.7 and 8.4 s), so a file that launches
its own batch per process count pays ~13 s (4 ranks), ~10 s (2) and ~5 s (1) of start-up for
each (issue 12). A test module whose runs neither load a checkpoint nor save one that another
run reads declares them as a module constant

    SHARED_RUNS = {name: (processes, flags)}

and reads them through the session-scoped `shared_runs` fixture (tests/conftest.py).
The collected modules' runs of one process count go into launches of up to RUNS_PER_LAUNCH runs,
in collection order; the first module to need a run starts its launch (support/batch_worker.py:
each run built from its own flags, on process groups made once per layout). The launches a test
needs run side by side, one lane per process count (support/torchrun.py in_lanes: tiny runs wait on
gloo more than they compute). Runs of the same
processes and flags run once: the same flags give the same bits, across processes and after
other runs in a batch (test_layouts.py checks both).
A flag containing RUN_DIR gets the run's own folder (where its stdout logs are written) instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from support.torchrun import NOT_RUN, batched_log, in_lanes, raise_first, train_batches_and_read

RUN_DIR = "{RUN_DIR}"
# At most this many runs a launch: the first test to need a launch pays for all of it inside its
# own pytest timeout (600 s). 16 four-rank runs of 10 steps take ~60 s on the 2-core AMD kind
# (~3.5 s each, measured), twice that with other work beside them.
RUNS_PER_LAUNCH = 16
Run = tuple[int, list[str]]


def _processes(launch: dict[str, Run]) -> int:
    """A launch's process count (every run of a launch has the same)."""
    return next(iter(launch.values()))[0]


def _key(run: Run) -> tuple[int, tuple[str, ...]]:
    nproc, flags = run
    return nproc, tuple(flags)


class SharedRuns:
    def __init__(self, out_dir: Path, declared: Iterable[tuple[str, dict[str, Run]]]):
        """`declared`: (module __name__, its SHARED_RUNS) of every collected module, in collection order."""
        self.out_dir = out_dir
        self.folder_of: dict[tuple, str] = {}  # run key -> its folder under out_dir
        self.launches: list[dict[str, Run]] = []  # {folder: run} of one process count, in order
        self.records: dict[str, list[dict]] = {}  # folder -> per-step records
        self.failed: set[str] = set()  # folders of launches that failed
        for module, runs in declared:
            self.declare(module, runs)

    def declare(self, module: str, runs: dict[str, Run]) -> None:
        for name, run in runs.items():
            if _key(run) in self.folder_of:
                continue
            folder = f"{module.rsplit('.', 1)[-1]}/{name}"
            self.folder_of[_key(run)] = folder
            nproc, flags = run
            launch = next((launch for launch in self.launches if len(launch) < RUNS_PER_LAUNCH
                           and _processes(launch) == nproc), None)
            if launch is None:
                launch = {}
                self.launches.append(launch)
            launch[folder] = (nproc, [flag.replace(RUN_DIR, str(self.out_dir / folder)) for flag in flags])

    def read(self, module: str, runs: dict[str, Run]) -> dict[str, list[dict]]:
        """{name: per-step records} of `runs`, launching the batches they are in if not run yet."""
        self.declare(module, runs)  # a module the session did not collect (imported directly)
        self.run({self.folder_of[_key(run)] for run in runs.values()})
        return {name: self.records[self.folder_of[_key(run)]] for name, run in runs.items()}

    def launched_with(self, folders: set[str]) -> set[str]:
        """Every run folder that running `folders` launches (the not yet run launches holding them)."""
        return {folder for launch in self.launches if folders & launch.keys() for folder in launch}

    def run(self, folders: set[str]) -> list[set[str]]:
        """Run the launches holding any of `folders` that have not run; the folders of each."""
        if folders & self.failed:  # one failed launch fails every module that needs it, once
            raise AssertionError("a shared launch these runs are in failed (see the first test that needed it)")
        needed = [launch for launch in self.launches if folders & launch.keys()]
        for launch in needed:
            self.launches.remove(launch)
        outcomes = in_lanes([(_processes(launch), functools.partial(train_batches_and_read, self.out_dir, launch))
                             for launch in needed])
        done = []
        for launch, outcome in zip(needed, outcomes):
            if outcome is NOT_RUN:  # after a failure in its lane: still to run
                self.launches.append(launch)
            elif isinstance(outcome, BaseException):
                self.failed.update(launch)
            else:
                self.records.update(outcome)
                done.append(set(launch))
        raise_first(outcomes)
        return done

    def log(self, run: Run) -> str:
        """What a run printed, all ranks in rank order."""
        return batched_log(self.out_dir, self.folder_of[_key(run)])

    def folder_name(self, run: Run) -> str:
        return self.folder_of[_key(run)]

    def folder(self, run: Run) -> Path:
        """The run's own folder: what RUN_DIR in its flags became."""
        return self.out_dir / self.folder_of[_key(run)]
