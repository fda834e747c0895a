"""`goldtron golden ...` and `goldtron cases`: the golden-file tools people run by hand."""

from __future__ import annotations

import sys
from pathlib import Path

from goldtron.gate.actual import load_actual
from goldtron.gate.checks import relative_difference
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import RECORDED_METRICS, golden_from_scalars, load_golden, write_golden


def from_tensorboard(tensorboard_dir: Path, out: Path, step_interval: int, train_iters: int | None,
                     metrics: list[str] | None) -> int:
    from goldtron.gate.tensorboard_reader import read_scalars

    if step_interval < 1:
        raise GateInputError(f"--step-interval {step_interval}: must be at least 1")
    scalars = read_scalars(tensorboard_dir)
    wanted = metrics or [m for m in RECORDED_METRICS if m in scalars]
    missing = [m for m in wanted if m not in scalars]
    if missing:
        raise GateInputError(f"{tensorboard_dir}: no scalars for {', '.join(missing)} "
                             f"(present: {', '.join(sorted(scalars))})")
    golden = golden_from_scalars(scalars, step_interval, train_iters, wanted)
    write_golden(out, golden)
    print(f"wrote {out} ({', '.join(f'{m}: {len(s.values)} steps' for m, s in golden.items())})")
    return 0


def diff(first: Path, second: Path) -> int:
    """Print per metric where two goldens differ; exit 0 when identical, 1 otherwise."""
    a, b = load_actual(first), load_actual(second)
    differ = False
    for metric in list(a) + [m for m in b if m not in a]:
        if metric not in a or metric not in b:
            print(f"{metric}: only in {first if metric in a else second}")
            differ = True
            continue
        steps = sorted(set(a[metric].values) | set(b[metric].values))
        changed = [s for s in steps if a[metric].values.get(s) != b[metric].values.get(s)]
        if not changed:
            print(f"{metric}: identical ({len(steps)} steps)")
            continue
        differ = True
        worst = max(changed, key=lambda s: relative_difference(a[metric].numeric(s), b[metric].numeric(s)))
        print(f"{metric}: {len(changed)} of {len(steps)} steps differ; first at step {changed[0]} "
              f"({a[metric].values.get(changed[0], 'missing')} vs {b[metric].values.get(changed[0], 'missing')}); "
              f"largest relative difference {relative_difference(a[metric].numeric(worst), b[metric].numeric(worst)):.3g} "
              f"at step {worst}")
    return 1 if differ else 0


def golden_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.rglob("golden_values_*.json")))
        else:
            files.append(path)
    return files


def validate(paths: list[Path]) -> int:
    files = golden_files(paths)
    if not files:
        raise GateInputError(f"no golden_values_*.json under {', '.join(map(str, paths))}")
    bad = 0
    for path in files:
        try:
            load_golden(path)
        except GateInputError as error:
            bad += 1
            print(f"BAD  {error}")
    print(f"{len(files) - bad} of {len(files)} golden files valid")
    return 1 if bad else 0


def stats(runs: list[Path], out: Path) -> int:
    from goldtron.gate.stats import run_statistics, write_statistics

    statistics = run_statistics([load_actual(run) for run in runs])
    write_statistics(out, statistics)
    for metric, entry in statistics.items():
        print(f"{metric}: {len(entry['steps'])} steps over {entry['runs']} runs, "
              f"suggested rtol {entry['suggested_rtol']:.3g}")
    print(f"wrote {out}")
    return 0


def list_cases(root: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from goldtron.gate.case import SUPPORTED_TEST_TYPES, find_cases, load_case

    if not root.is_dir():
        raise GateInputError(f"{root}: not a folder. Fix: give the folder that holds the case folders")
    table = Table(title=f"cases under {root}")
    for column in ("case", "TEST_TYPE", "goldens (environment_platform)", "note"):
        table.add_column(column, overflow="fold")
    broken = 0
    for case_dir in find_cases(root):
        try:
            case = load_case(case_dir)
        except GateInputError as error:
            broken += 1
            table.add_row(str(case_dir.relative_to(root)), "?", "", f"[red]{error}[/]")
            continue
        goldens = ", ".join(p.name.removeprefix("golden_values_").removesuffix(".json") for p in case.existing_goldens())
        note = "" if case.test_type in SUPPORTED_TEST_TYPES else "TEST_TYPE not supported when run"
        table.add_row(str(case_dir.relative_to(root)) or ".", case.test_type, goldens or "-", note)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 1 if broken else 0


def dispatch(args) -> int:
    if args.action == "from-tensorboard":
        return from_tensorboard(args.tensorboard_dir, args.out, args.step_interval, args.train_iters, args.metrics)
    if args.action == "diff":
        return diff(args.first, args.second)
    if args.action == "validate":
        return validate(args.paths)
    return stats(args.runs, args.out)
