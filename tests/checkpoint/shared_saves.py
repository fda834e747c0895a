"""The session's save-then-load runs of the tiny model: every saving run in the session's first
launches, each save rewound, then every loading run in the second (issue 12).

A save and the load that checks it still run in processes of their own (an in-process resume
could carry state a real restart loses); what this shares is the launch: a loading run may follow
another module's loading run in one process, as the layout runs do (support/shared_runs.py, whose
batches test_layouts.py shows leak nothing). A 4-rank launch costs ~13 s of start-up on the 2-core
AMD kind, a 10-step tiny run ~3.5 s (support/shared_runs.py).

A module declares

    SHARED_SAVES = {save name: ((processes, flags), rewind to)}
    SHARED_LOADS = {name: (processes, flags)}

where saved(name) in a flag is that save's folder (of this module): a saving run names it in
--save (and --load, for Megatron's ckpt-resume); after it, the folder is rewound to the iteration
given (ckpt_runs.rewind: as Megatron's test removes the end checkpoint) and what it held before is
recorded. A loading run names it in --load (and --save, to resume and save again: then no other
loading run may read that save, since they can share a launch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from checkpoint.ckpt_runs import rewind, tiny_under
from support.shared_runs import Run, SharedRuns

SAVED = re.compile(r"\{SAVED:([^}]*)\}")


def saved(name: str) -> str:
    """The folder of this module's save `name`, in a flag of SHARED_SAVES or SHARED_LOADS."""
    return f"{{SAVED:{name}}}"


@dataclass
class Saving:
    steps: list[dict]
    log: str
    files_before_rewind: list[str]  # paths under the save folder after the run, before the rewind
    folder: Path


Declared = tuple[str, dict[str, tuple[Run, int]], dict[str, Run]]


class SharedSaves:
    def __init__(self, out_dir: Path, declared: Iterable[Declared]):
        """`declared`: (module __name__, its SHARED_SAVES, its SHARED_LOADS), in collection order."""
        self.out_dir = out_dir
        self.saving = SharedRuns(out_dir / "saving", [])
        self.loading = SharedRuns(out_dir / "loading", [])
        self.save_of: dict[str, tuple[Path, int]] = {}  # saving folder -> (its save folder, rewind to)
        self.needs: dict[str, set[str]] = {}  # loading folder -> the saving folders it reads
        self.saved: dict[str, list[str]] = {}  # saving folder -> files before the rewind
        for module, saves, loads in declared:
            self._declare(module, saves, loads)

    def _save_folder(self, module: str, name: str) -> Path:
        return self.out_dir / "saves" / module.rsplit(".", 1)[-1] / name.replace(" ", "_")

    def _resolve(self, module: str, run: Run) -> tuple[Run, set[Path]]:
        """The run with saved(...) replaced by folders, and those folders."""
        nproc, flags = run
        folders: set[Path] = set()

        def folder(match: re.Match) -> str:
            folders.add(self._save_folder(module, match.group(1)))
            return str(self._save_folder(module, match.group(1)))

        return (nproc, [SAVED.sub(folder, flag) for flag in flags]), folders

    def _declare(self, module: str, saves: dict[str, tuple[Run, int]], loads: dict[str, Run]) -> None:
        saving_run_of = {}  # save folder -> the folder of the run that writes it
        for name, (run, rewind_to) in saves.items():
            resolved, _ = self._resolve(module, run)
            self.saving.declare(module, {name: resolved})
            save = self._save_folder(module, name)
            save.parent.mkdir(parents=True, exist_ok=True)
            self.save_of[self.saving.folder_name(resolved)] = (save, rewind_to)
            saving_run_of[save] = self.saving.folder_name(resolved)
        for name, run in loads.items():
            resolved, folders = self._resolve(module, run)
            self.loading.declare(module, {name: resolved})
            self.needs[self.loading.folder_name(resolved)] = {saving_run_of[f] for f in folders if f in saving_run_of}

    def read(self, module: str, saves: dict[str, tuple[Run, int]], loads: dict[str, Run]
             ) -> tuple[dict[str, Saving], dict[str, tuple[list[dict], str]]]:
        """({save name: Saving}, {load name: (per-step records, log)}), running what they need."""
        self._declare(module, saves, loads)  # a module the session did not collect
        saving = {name: self._resolve(module, run)[0] for name, (run, _) in saves.items()}
        loading = {name: self._resolve(module, run)[0] for name, run in loads.items()}
        our_loads = {self.loading.folder_name(run) for run in loading.values()}
        # Every load launched with ours needs its save written and rewound first.
        wanted = {self.saving.folder_name(run) for run in saving.values()}
        wanted |= {folder for load in self.loading.launched_with(our_loads) for folder in self.needs[load]}
        for launch in self.saving.run(wanted):
            for folder in launch:
                save, rewind_to = self.save_of[folder]
                self.saved[folder] = sorted(str(path.relative_to(save)) for path in save.rglob("*"))
                rewind(save, rewind_to)
        self.loading.run(our_loads)
        return ({name: Saving(self.saving.records[self.saving.folder_name(run)], self.saving.log(run),
                              self.saved[self.saving.folder_name(run)], self.save_of[self.saving.folder_name(run)][0])
                 for name, run in saving.items()},
                {name: (self.loading.records[self.loading.folder_name(run)], self.loading.log(run))
                 for name, run in loading.items()})


def saving_run(layout: str, flags: list[str], iters: int, half: int, name: str) -> tuple[Run, int]:
    """A SHARED_SAVES entry as train_save_rewind runs it: train to `iters` under `layout` saving
    at `half` (and the end) into saved(name), rewound to `half`."""
    return tiny_under(layout, flags + ["--train-iters", str(iters), "--save", saved(name), "--save-interval", str(half)]), half


def resume_run(layout: str, flags: list[str], iters: int, half: int, name: str) -> Run:
    """Both runs of train_then_resume (Megatron's ckpt-resume): train to `iters` saving every
    `half` into saved(name) and loading from it; run 1 starts from scratch, run 2 from `half`."""
    return tiny_under(layout, flags + ["--train-iters", str(iters), "--save", saved(name), "--save-interval", str(half),
                                       "--load", saved(name)])
