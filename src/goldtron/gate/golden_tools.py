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


def _run_values(run_dir: Path, environment: str) -> tuple[Path, dict]:
    """The run-1 values a gate run left in RUN_DIR/actual_values, and their provenance."""
    from goldtron.gate.provenance import read_sidecar

    folder = run_dir / "actual_values"
    files = [path for path in sorted(folder.glob(f"golden_values_{environment}_*.json")) if not path.stem.endswith("_2nd")]
    if not files:
        raise GateInputError(f"{folder}: no golden_values_{environment}_*.json. Fix: give the --output-dir of a "
                             "finished `goldtron test` run (it writes actual_values/ there)")
    if len(files) > 1:
        raise GateInputError(f"{folder}: several run files ({', '.join(p.name for p in files)}). Fix: keep one")
    try:
        record = read_sidecar(files[0])
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise GateInputError(f"{files[0]}.provenance: missing or not valid JSON, so where these values come from "
                             "is unknown. Fix: re-run the case with this goldtron (it writes the sidecar)")
    return files[0], record


def drift_score(result) -> float:
    """The worst step's distance from the golden as a fraction of the approximate band (1 = its edge)."""
    actual, reference = result.worst_actual, result.worst_reference
    if actual is None or reference is None or actual == reference:
        return 0.0
    band = result.check.atol + result.check.rtol * abs(reference)
    return abs(actual - reference) / band if band > 0 and abs(actual - reference) < float("inf") else float("inf")


def promote(run_dir: Path, case_dir: Path, environment: str, platform: str | None, force: bool) -> int:
    """Make a run's actual values a case's golden, refusing drift outside the approximate band.

    Compared with the golden the chain picks for the target platform (a portable one is judged
    with the cross-platform tolerances, iteration-time in calibrated units); only the approximate
    checks count: exact changes are what a refresh is for, silent drift beyond the band is not."""
    from datetime import datetime, timezone

    from goldtron.gate.case import load_case
    from goldtron.gate.checks import judge
    from goldtron.gate.golden_choice import choose_golden
    from goldtron.gate.judging import load_reference
    from goldtron.gate.provenance import write_sidecar

    run_file, record = _run_values(run_dir, environment)
    target_platform = platform or str(record.get("platform"))
    case = load_case(case_dir).resolved_for(target_platform)
    target = case.golden_path(environment, target_platform)
    choice = choose_golden(case, environment, target_platform, forced=False)
    actual = load_golden(run_file)
    drift: dict[str, float] = {}
    refused = []
    if choice.exists:
        reference = load_reference(case, choice, recording=False, calibration=record.get("calibration"))
        band_only = {metric: dict(values, exact=False) for metric, values in reference.tolerances.items()}
        for metric in case.metrics:
            band_only.setdefault(metric, {"exact": False})
        verdict = judge(reference.golden, reference.in_golden_units(actual), case.metrics, band_only, deterministic=False, source=str(case.config_file))
        print(f"drift of {run_file} from {choice.path.name} ({choice.reason}):")
        for result in verdict.results:
            if result.status == "skip":
                continue
            drift[result.metric] = drift_score(result)
            mark = "ok" if result.status == "pass" else "OUTSIDE THE BAND"
            print(f"  {result.metric:24s} drift {drift[result.metric]:8.3g} of the band ({result.check.describe()}, "
                  f"worst step {result.worst_step}): {mark}")
            if result.status != "pass":
                refused.append(result.metric)
    else:
        print(f"no golden to drift from for {target_platform} ({choice.reason}): nothing to compare")
    if refused and not force:
        print(f"refused: {', '.join(refused)} drifted outside the approximate band; {target} is unchanged. "
              "Fix: find why the run moved, or pass --force to accept it (the sidecar then says so)")
        return 1
    record = dict(record, platform=target_platform, promoted_from=str(run_dir.resolve()),
                  promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  compared_with=choice.path.name if choice.exists else None, drift=drift,
                  forced=bool(refused and force))
    written = [write_golden(target, load_golden(run_file))]
    second = run_file.with_name(run_file.stem + "_2nd.json")
    if second.is_file():
        written.append(write_golden(case.golden_path(environment, target_platform, second_run=True), load_golden(second)))
    for path in written:
        write_sidecar(path, record)
        print(f"wrote {path}" + (" (forced past drift)" if refused else ""))
    return 0


def dispatch(args) -> int:
    if args.action == "promote":
        return promote(args.run_dir, args.case, args.environment, args.platform, args.force)
    if args.action == "from-tensorboard":
        return from_tensorboard(args.tensorboard_dir, args.out, args.step_interval, args.train_iters, args.metrics)
    if args.action == "diff":
        return diff(args.first, args.second)
    if args.action == "validate":
        return validate(args.paths)
    return stats(args.runs, args.out)
