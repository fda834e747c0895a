"""`goldtron test`: load the case, pick the golden of this machine, run every repeat, judge,
record if asked, and leave the reports in the output folder.

Output folder: repeat_<k>/ (phase logs, TensorBoard, checkpoints), actual_values/ (run 1 in
golden schema, ready to promote), summary.md, junit.xml, <case>.png, statistics.json (with
N_REPEAT > 1) and timings.json (total vs training wall time, for the overhead benchmark).
With several nodes, every node runs the phases and the last node (which hosts the rank that
writes TensorBoard) prepares the resume, judges and reports.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from goldtron.gate.calibration import Calibrator, faster
from goldtron.gate.case import CONFIG_NAME, golden_file_name, load_case
from goldtron.gate.cpu_sizing import sized_case, wants_cpu_size
from goldtron.gate.equivalence import (EQUIVALENCE_LINE, judge_against_twin, run_twin, single_process_twin,
                                       unrounded_values, without_dropout)
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import Golden, write_golden
from goldtron.gate.golden_choice import choose_golden
from goldtron.gate.interrupts import GateInterrupted, report_interrupt, stop_on_signals
from goldtron.gate.judging import Reference, judge_repeat, load_reference, recorded_golden, second_run_golden
from goldtron.gate.launcher import LaunchOptions, choose_launcher
from goldtron.gate.platform import DEFAULT_ENVIRONMENT, detect_platform, gpu_count
from goldtron.gate.report import CaseReport, print_table, write_reports
from goldtron.gate.runner import (RunOptions, check_layout_fits, check_supported, default_nproc, frozen_checkpoint,
                                  refused_by_trainer, run_repeat)

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


@dataclass
class TestRequest:
    case_dir: Path
    environment: str = DEFAULT_ENVIRONMENT
    platform: str | None = None
    record: bool = False
    output_dir: Path | None = None
    allow_nondeterministic: bool = False
    data_path: Path = Path("~/.cache/goldtron/data")
    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    frozen_checkpoint: Path | None = None
    n_repeat: int | None = None
    plot: bool = True
    size: str = "auto"
    equivalence: bool = False
    launcher: str = "auto"
    command: list[str] = field(default_factory=list)
    progress: object = None

    @classmethod
    def from_args(cls, args, command: list[str]) -> "TestRequest":
        for flag, value in (("--nproc-per-node", args.nproc_per_node), ("--n-repeat", args.n_repeat),
                            ("--nnodes", args.nnodes)):
            if value is not None and value < 1:
                raise GateInputError(f"{flag} {value}: must be at least 1")
        return cls(args.case, args.environment or DEFAULT_ENVIRONMENT, args.platform, args.record, args.output_dir,
                   args.allow_nondeterministic, args.data_path.expanduser(), args.nproc_per_node, args.nnodes,
                   args.node_rank, args.rdzv_endpoint, args.frozen_checkpoint, args.n_repeat, not args.no_plot,
                   args.size, args.equivalence, args.launcher, command)


def _write_values(folder: Path, request: TestRequest, platform: str, case, run1: Golden, run2: Golden | None,
                  resume_step: int | None, record: dict) -> list[Path]:
    """Run 1 (and run 2 as `_2nd`) in golden schema under `folder`, each with its provenance."""
    from goldtron.gate.provenance import write_sidecar

    written = [write_golden(folder / golden_file_name(request.environment, platform), recorded_golden(run1, case))]
    if run2 is not None and resume_step is not None:
        written.append(write_golden(folder / golden_file_name(request.environment, platform, True),
                                    second_run_golden(recorded_golden(run2, case), resume_step)))
    for path in written:
        write_sidecar(path, record)
    return written


def _calibrate(case, calibrator: Calibrator) -> dict | None:
    """The calibration workload timed on this machine (CPUs only, and only when iteration-time is
    checked): what makes this run's iteration-time comparable with another machine's."""
    from goldtron.gate.portable import CALIBRATED_METRIC

    if CALIBRATED_METRIC not in case.metrics or gpu_count():
        return None
    return calibrator.measure()


def _warm_imports(plot: bool) -> None:
    """Import what judging and plotting need while the first phase trains (they cost seconds
    on a small CPU, and the gate's process is idle during training)."""
    import tensorboard.backend.event_processing.event_accumulator  # noqa: F401

    if plot:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401


def _check_equivalence_request(request: TestRequest) -> None:
    if request.record:
        raise GateInputError("--record with --equivalence: an equivalence run trains without dropout, so it is "
                             "not the case's golden. Fix: record without --equivalence")
    if request.nnodes > 1:
        raise GateInputError("--equivalence runs on one node (its twin is one process). Fix: drop --nnodes")


def _case_as_run(request: TestRequest, platform: str):
    """The case with this platform's override, at CPU size if asked (with the report's lines on
    it), without dropout under equivalence; and whether equivalence is judged."""
    written = load_case(request.case_dir)
    case = written.resolved_for(platform)
    size_notes = []
    if wants_cpu_size(request.size, platform, written):
        case, changes = sized_case(case, frozen_checkpoint_given=request.frozen_checkpoint is not None)
        size_notes = [f"sized for a CPU (--size cpu): {len(changes)} flag(s), Megatron's value -> CPU value"]
        size_notes += [f"  {change.line()}" for change in changes]
    equivalence = request.equivalence or case.equivalence
    if equivalence:
        _check_equivalence_request(request)
        case = without_dropout(case)
    return case, size_notes, equivalence


def _run_test(request: TestRequest, reports: list | None = None, *, calibrator: Calibrator) -> int:
    """One case; its CaseReport is appended to `reports` when given (a folder run's table)."""
    started = time.monotonic()
    platform = request.platform or detect_platform()
    case, size_notes, equivalence = _case_as_run(request, platform)
    check_supported(case)
    n_repeat = request.n_repeat or case.n_repeat
    output_dir = (request.output_dir or Path("runs") / case.name).resolve()
    gpus = gpu_count() if platform.startswith(("dgx", "gpu")) else 0
    launcher = choose_launcher(request.launcher, case.trainer, request.nnodes, gpu_count())
    launch = LaunchOptions(request.nproc_per_node or default_nproc(case, gpus, request.nnodes),
                           request.nnodes, request.node_rank, request.rdzv_endpoint, launcher)
    check_layout_fits(case, launch, gpus if request.nproc_per_node is None else 0)
    judging = launch.is_last_node
    choice = choose_golden(case, request.environment, platform, forced=request.platform is not None)
    report = CaseReport(case=case.name)
    if reports is not None:
        reports.append(report)
    refused = refused_by_trainer(case)
    if refused is None and equivalence:
        refused = refused_by_trainer(single_process_twin(case))
    if refused is not None:  # known before any launch or calibration; every rank would say it after start-up
        print(refused, flush=True)
        report.errors.append(f"the trainer refuses the case's flags: {refused}")
        return EXIT_BAD_INPUT
    calibration = _calibrate(case, calibrator) if judging else None  # timed again after the phases
    try:
        if equivalence:
            reference = Reference(None, choice.path, tolerances=case.tolerances)
        else:
            reference = load_reference(case, choice, request.record) if judging else None
    except GateInputError as error:
        if choice.exists or "no golden file" not in str(error):
            raise
        print(f"FAIL {case.name}: {error}")  # a missing golden is a failed gate, not a bad case
        report.errors.append(str(error))
        return EXIT_FAIL
    if judging:
        golden_line = f"golden: {choice.reason}" if not request.record else f"recording: {choice.path.name}"
        if equivalence:
            golden_line = f"golden: none needed (layout equivalence, {EQUIVALENCE_LINE})"
        print(golden_line, flush=True)
        report.notes.append(golden_line)
    for line in size_notes if judging else ():
        print(line, flush=True)
    report.notes.extend(size_notes)
    deterministic = case.deterministic and not request.allow_nondeterministic
    if case.ignored_keys:
        report.notes.append(f"{case.config_file}: ignored top-level key(s) {', '.join(case.ignored_keys)}")
    if not case.deterministic:
        report.notes.append("case is non-deterministic (NVTE_ALLOW_NONDETERMINISTIC_ALGO=1): exact checks skipped")

    from goldtron.gate.progress import PhaseProgress

    options = RunOptions(output_dir, request.data_path, launch, request.progress or PhaseProgress(),
                         request.frozen_checkpoint, n_repeat)
    first_run1, training_s, run1_values = None, 0.0, []
    if judging:
        threading.Thread(target=_warm_imports, args=(request.plot,), daemon=True).start()
    if case.test_type == "frozen-resume":
        frozen_checkpoint(case, options)  # before any phase (the twin's too) is started
    twin, config_error = run_twin(case, options, report) if equivalence and judging else (None, False)
    for index in range(1, n_repeat + 1):
        if equivalence and twin is None:
            break  # the twin failed: report.errors says how
        repeat = run_repeat(case, options, index)
        training_s += repeat.training_wall_s
        if judging and index == 1:
            calibration = faster(calibration, _calibrate(case, calibrator))
            reference.use_calibration(calibration)
        config_error = config_error or any(phase.config_error for phase in repeat.phases)
        if not judging:
            report.errors.extend(phase.describe_failure() for phase in repeat.phases if not phase.ok)
            continue
        run1, run2 = judge_repeat(case, repeat, reference, deterministic, report)
        if run1 is None:
            break  # a failed phase: later repeats would fail the same way
        run1_values.append(run1)
        if index == 1 and twin is not None:
            report.judgements.append(judge_against_twin(
                twin, unrounded_values(repeat.tensorboard["run1"], case.train_iters), str(case.config_file)))
        if index == 1:
            from goldtron.gate.provenance import provenance

            first_run1 = run1
            record = provenance(request.environment, platform, request.command, case.path, calibration)
            _write_values(output_dir / "actual_values", request, platform, case, run1, run2, repeat.resume_step,
                          record)
            if request.record:
                for path in _write_values(case.path, request, platform, case, run1, run2, repeat.resume_step, record):
                    report.notes.append(f"recorded {path}")
                reference.golden = recorded_golden(run1, case)  # later repeats must reproduce it
    if judging and len(run1_values) > 1:
        from goldtron.gate.stats import run_statistics, write_statistics

        write_statistics(output_dir / "statistics.json", run_statistics(run1_values))
    if judging:
        report.notes.extend(reference.notes)
        print_table(report)
        write_reports(report, output_dir)
        if request.plot and first_run1 is not None:
            from goldtron.gate.plots import plot_case

            plot_case(output_dir / f"{case.name}.png", f"{case.name} ({request.environment}, {platform})",
                      reference.golden, first_run1, list(case.metrics))
    else:
        print(f"node {launch.node_rank}: phases {'done' if not report.errors else 'FAILED'}; "
              f"node {launch.nnodes - 1} judges")
        for error in report.errors:
            print(error)
    (output_dir / f"timings{launch.log_suffix}.json").write_text(json.dumps(
        {"total_wall_s": time.monotonic() - started, "training_wall_s": training_s}, indent=2) + "\n")
    if config_error:
        return EXIT_BAD_INPUT
    return EXIT_PASS if report.passed else EXIT_FAIL


def _is_folder_of_cases(path: Path) -> bool:
    return path.is_dir() and not (path / CONFIG_NAME).is_file()


def run_test(request: TestRequest) -> int:
    """`goldtron test`. SIGINT/SIGTERM/SIGHUP stop the running phase's process tree (run_phase) and
    end the run with exit code 128 + the signal; goldens are written only after judging, and
    atomically, so an interrupt leaves none behind, not even half of one."""
    with stop_on_signals(), Calibrator() as calibrator:  # one calibration process for every case
        try:
            if _is_folder_of_cases(Path(request.case_dir)):
                from goldtron.gate.folder_run import run_folder

                return run_folder(request, partial(_run_test, calibrator=calibrator))
            return _run_test(request, calibrator=calibrator)
        except GateInterrupted as interrupted:
            interrupted.case = interrupted.case or Path(request.case_dir).name
            return report_interrupt(interrupted, request.output_dir)
