"""Turn a case's runs into a CaseReport: run 1 vs golden (or bands), run 2 vs run 1, repeats.

Also builds what a run would record as goldens (run 1, and run 2 as a `_2nd` file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from goldtron.gate.actual import load_actual
from goldtron.gate.case import Case
from goldtron.gate.checks import judge, restrict
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import RECORDED_METRICS, Golden, load_golden, pad_before
from goldtron.gate.report import CaseReport, Judgement
from goldtron.gate.runner import RepeatRun


@dataclass
class Reference:
    """What run 1 is judged against: a golden file, or statistical bands from `golden stats`."""

    golden: Golden | None
    golden_path: Path
    second_golden: Golden | None = None
    bands: dict[str, dict[int, tuple[float, float]]] | None = None


def recorded_golden(actual: Golden, case: Case) -> Golden:
    metrics = list(RECORDED_METRICS) + [m for m in case.metrics if m not in RECORDED_METRICS]
    return {metric: actual[metric] for metric in metrics if metric in actual}


def second_run_golden(run2: Golden, resume_step: int) -> Golden:
    """Run 2 in a `_2nd` file: "nan" on every step up to the resume, as Megatron's files."""
    return {metric: pad_before(series, resume_step + 1) for metric, series in run2.items()}


def no_golden_message(case: Case, wanted: Path) -> str:
    existing = ", ".join(path.name for path in case.existing_goldens()) or "none"
    return (f"no golden file {wanted.name} for this environment/platform in {case.path} (existing: {existing}). "
            "Fix: pass --platform/--environment to use another, or record one with --record")


def _name(case: Case, repeat: RepeatRun, what: str) -> str:
    return f"repeat {repeat.index}: {what}" if case.n_repeat > 1 else what


def judge_repeat(case: Case, repeat: RepeatRun, reference: Reference, deterministic: bool,
                 report: CaseReport) -> tuple[Golden | None, Golden | None]:
    """Add this repeat's judgements to `report`; returns (run 1, run 2) values when they exist."""
    for phase in repeat.phases:
        if not phase.ok:
            report.errors.append(phase.describe_failure())
    if not repeat.ok:
        return None, None
    source = str(case.config_file)
    last = case.train_iters
    try:
        run1 = load_actual(repeat.tensorboard["run1"], last_step=last)
    except GateInputError as error:
        report.errors.append(f"run 1 wrote no TensorBoard logs: {error}")
        return None, None
    if reference.bands is not None:
        report.judgements.append(Judgement(_name(case, repeat, "run 1 vs bands"), judge(
            {}, run1, case.metrics, case.tolerances, deterministic, "bands", reference.bands, case.bands_sigmas, source)))
    elif reference.golden is not None:
        report.judgements.append(Judgement(_name(case, repeat, "run 1 vs golden"), judge(
            reference.golden, run1, case.metrics, case.tolerances, deterministic, "golden", source=source)))
    run2 = None
    if "run2" in repeat.tensorboard and repeat.resume_step is not None:
        try:
            run2 = load_actual(repeat.tensorboard["run2"], last_step=last)
        except GateInputError as error:
            report.errors.append(f"run 2 wrote no TensorBoard logs: {error}")
            return run1, None
        after_resume = restrict(run1, repeat.resume_step + 1)
        report.judgements.append(Judgement(_name(case, repeat, "run 2 vs run 1"), judge(
            after_resume, run2, case.metrics, case.tolerances, deterministic, "run 1", source=source)))
        if reference.second_golden is not None:
            report.judgements.append(Judgement(_name(case, repeat, "run 2 vs golden _2nd"), judge(
                reference.second_golden, run2, case.metrics, case.tolerances, deterministic, "golden _2nd",
                source=source)))
    return run1, run2


def load_reference(case: Case, golden_path: Path, recording: bool) -> Reference:
    """The golden (and `_2nd`) of this platform, or bands; a missing golden is an error unless recording."""
    second_path = golden_path.with_name(golden_path.stem + "_2nd.json")
    bands = None
    if case.bands_stats is not None:
        from goldtron.gate.stats import load_bands

        bands = load_bands(case.bands_stats)
    golden = None
    if golden_path.is_file() and not recording:
        golden = load_golden(golden_path)
    elif bands is None and not recording:
        raise GateInputError(no_golden_message(case, golden_path))
    second = load_golden(second_path) if second_path.is_file() and not recording else None
    return Reference(golden, golden_path, second, bands)
