"""Turn a case's runs into a CaseReport: run 1 vs golden (or bands), run 2 vs run 1, repeats.

Also builds what a run would record as goldens (run 1, and run 2 as a `_2nd` file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from goldtron.gate.actual import load_actual
from goldtron.gate.case import Case
from goldtron.gate.checks import judge, restrict
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import RECORDED_METRICS, Golden, MetricSeries, load_golden, pad_before
from goldtron.gate.golden_choice import GoldenChoice
from goldtron.gate.portable import CALIBRATED_METRIC, portable_tolerances
from goldtron.gate.report import CaseReport, Judgement
from goldtron.gate.runner import RepeatRun


@dataclass
class Reference:
    """What run 1 is judged against: a golden file, or statistical bands from `golden stats`."""

    golden: Golden | None
    golden_path: Path
    second_golden: Golden | None = None
    bands: dict[str, dict[int, tuple[float, float]]] | None = None
    # Run 1 vs golden: the case's tolerances, or the cross-platform ones for a portable golden.
    tolerances: dict[str, dict] = field(default_factory=dict)
    # Portable golden: the calibration timed where it was recorded; run 1's iteration-time is
    # multiplied by `time_scale` (that over this machine's) so both are in the golden machine's seconds.
    golden_calibration: dict | None = None
    time_scale: float | None = None
    notes: list[str] = field(default_factory=list)

    def in_golden_units(self, values: Golden) -> Golden:
        """`values` with iteration-time in the golden machine's seconds (unchanged when not calibrated)."""
        return values if self.time_scale is None else scaled(values, CALIBRATED_METRIC, self.time_scale)

    def use_calibration(self, calibration: dict | None) -> None:
        """Set `time_scale` from this machine's calibration (the latest, best timing wins)."""
        if self.golden_calibration is None:
            return
        if calibration is None:
            raise GateInputError(f"{self.golden_path}: {CALIBRATED_METRIC} against a portable golden needs this "
                                 "machine's calibration, and none was measured (a GPU platform?). Fix: force this "
                                 "platform's own golden with --platform, or drop iteration-time from METRICS")
        if self.golden_calibration.get("workload") != calibration["workload"]:
            raise GateInputError(f"{self.golden_path}.provenance: calibration workload "
                                 f"{self.golden_calibration.get('workload')!r}, this gate times {calibration['workload']!r}: "
                                 f"the units differ. {RECALIBRATE_FIX}")
        recorded = self.golden_calibration["seconds"]
        self.time_scale = recorded / calibration["seconds"]
        self.notes = [note for note in self.notes if not note.startswith(CALIBRATED_METRIC)] + [
            f"{CALIBRATED_METRIC} judged in calibrated units: calibration workload {calibration['seconds']:.4f} s here "
            f"vs {recorded:.4f} s where the golden was recorded, so this run's times are multiplied by "
            f"{self.time_scale:.3f}"]


def scaled(golden: Golden, metric: str, factor: float) -> Golden:
    """`golden` with every finite value of `metric` multiplied by `factor`."""
    if metric not in golden:
        return golden
    series = golden[metric]
    values = {step: value if isinstance(value, str) else value * factor for step, value in series.values.items()}
    return dict(golden, **{metric: MetricSeries(series.start_step, series.end_step, series.step_interval, values)})


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
            reference.golden, reference.in_golden_units(run1), case.metrics, reference.tolerances, deterministic, "golden", source=source)))
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
                reference.second_golden, reference.in_golden_units(run2), case.metrics, reference.tolerances, deterministic, "golden _2nd",
                source=source)))
    return run1, run2


def load_reference(case: Case, choice: GoldenChoice, recording: bool, calibration: dict | None = None) -> Reference:
    """The chosen golden (and `_2nd`), or bands; a missing golden is an error unless recording.

    A portable golden brings the cross-platform tolerances, and its iteration-time is compared
    in calibrated units (its sidecar's calibration against this machine's `calibration`)."""
    golden_path = choice.path
    bands = None
    if case.bands_stats is not None:
        from goldtron.gate.stats import load_bands

        bands = load_bands(case.bands_stats)
    golden = None
    if golden_path.is_file() and not recording:
        golden = load_golden(golden_path)
    elif bands is None and not recording:
        raise GateInputError(no_golden_message(case, golden_path))
    second = load_golden(choice.second_path) if choice.second_path.is_file() and not recording else None
    reference = Reference(golden, golden_path, second, bands, tolerances=case.tolerances)
    if choice.portable and golden is not None:
        source = str(case.config_file)
        reference.tolerances = portable_tolerances(choice.family, case.tolerances, case.portable_tolerances,
                                                   source)
        missing = [metric for metric in case.metrics if metric not in golden]
        if missing:
            raise GateInputError(f"{golden_path}: portable golden lacks {', '.join(map(repr, missing))}, which "
                                 f"{case.config_file} checks (METRICS). Fix: re-record it with "
                                 f"`goldtron test {case.path} --record --platform {choice.family}`, or drop the "
                                 "metric from METRICS")
        if CALIBRATED_METRIC in case.metrics:
            reference.golden_calibration = recorded_calibration(golden_path)  # checked before any training
            if calibration is not None:
                reference.use_calibration(calibration)
    return reference


RECALIBRATE_FIX = ("Fix: re-record it with `goldtron test CASE --record --platform cpu` (the gate times the "
                   "calibration workload and writes it to the sidecar)")


def recorded_calibration(golden_path: Path) -> dict:
    """The calibration in a portable golden's sidecar; its absence is a clear error."""
    from goldtron.gate.provenance import read_sidecar

    try:
        recorded = (read_sidecar(golden_path) or {}).get("calibration")
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict) or isinstance(recorded.get("seconds"), bool) \
            or not isinstance(recorded.get("seconds"), (int, float)) or recorded["seconds"] <= 0:
        raise GateInputError(f"{golden_path}.provenance: no calibration (field 'calibration.seconds'), so "
                             f"{CALIBRATED_METRIC} cannot be judged on another machine. {RECALIBRATE_FIX}")
    return recorded
