"""`goldtron test ROOT`: every case under a folder in one command, resumable.

Each case runs as `goldtron test CASE` would, into OUTPUT/<case>/ (its own summary.md and
junit.xml). The folder's verdict is a table (case, verdict, why, worst relative difference, time)
in OUTPUT/summary.md, and all cases in one OUTPUT/junit.xml. After each case its row is written to
OUTPUT/folder_run.json; a later call with the same output folder keeps those rows and runs only
the cases without one, so a run killed half-way goes on where it stopped.

Verdicts: PASS, FAIL, REFUSED (the trainer's validation refused a flag: the row names it), and
ERROR (the case itself is bad: the gate's message).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from goldtron.gate.case import find_cases
from goldtron.gate.commands import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_PASS
from goldtron.gate.errors import GateInputError

STATE_FILE = "folder_run.json"


@dataclass
class CaseRow:
    case: str
    verdict: str
    why: str = ""
    worst_relative_difference: float | None = None
    seconds: float = 0.0


def _worst_relative(report) -> float | None:
    """The largest relative difference of the approximate checks (equivalence or golden)."""
    worst = [result.worst_difference for judgement in report.judgements for result in judgement.verdict.results
             if result.check.kind == "approximate" and result.worst_difference is not None
             and math.isfinite(result.worst_difference)]
    return max(worst) if worst else None


_UNIMPLEMENTED = re.compile(r"(--[\w-]+): a Megatron flag goldtron does not implement \((.*?)\); remove it")
_UNKNOWN = re.compile(r"(--[\w-]+): unknown flag")


def _refused_flags(message: str) -> str | None:
    """'--num-experts, --moe-router-topk (mixture of experts)' from the trainer's refusal, or None."""
    by_feature: dict[str, list[str]] = {}
    for flag, feature in _UNIMPLEMENTED.findall(message):
        by_feature.setdefault(feature, []).append(flag)
    parts = [f"{', '.join(flags)} ({feature})" for feature, flags in by_feature.items()]
    parts += [f"{flag} (unknown flag)" for flag in _UNKNOWN.findall(message)]
    return "refused: " + "; ".join(parts) if parts else None


def _row(name: str, code: int, report, seconds: float) -> CaseRow:
    if code == EXIT_BAD_INPUT:
        errors = [" ".join(error.split()) for error in (report.errors if report else [])]
        refused = _refused_flags(" ".join(errors))
        return CaseRow(name, "REFUSED" if refused else "ERROR", refused or (errors or ["bad input"])[0], None, seconds)
    why = "" if report is None or report.passed else report.summary_line().split(": ", 1)[-1]
    return CaseRow(name, "PASS" if code == EXIT_PASS else "FAIL", why,
                   _worst_relative(report) if report else None, seconds)


def _load_state(path: Path) -> dict[str, CaseRow]:
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
        return {row["case"]: CaseRow(**row) for row in rows}
    except (ValueError, KeyError, TypeError) as error:
        raise GateInputError(f"{path}: unreadable folder-run state ({error}). Fix: delete it to start the "
                             "folder run afresh") from None


def _save_state(path: Path, rows: dict[str, CaseRow]) -> None:
    from goldtron.checkpoint.layout import write_file_durably

    write_file_durably(str(path), json.dumps({"rows": [asdict(row) for row in rows.values()]}, indent=2) + "\n")


def run_folder(request, run_one) -> int:
    """Run every case under `request.case_dir` with `run_one(case_request, reports)`."""
    from goldtron.gate.report import junit_xml, print_folder_table

    root = Path(request.case_dir)
    cases = find_cases(root)
    if not cases:
        raise GateInputError(f"{root}: no model_config.yaml under it. Fix: give a case folder or a folder of cases")
    if request.record:
        raise GateInputError("--record with a folder of cases: record one case at a time")
    output_dir = (request.output_dir or Path("runs") / root.name).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / STATE_FILE
    rows = _load_state(state_path)
    reports = []
    for number, case_dir in enumerate(cases, 1):
        name = case_dir.name
        if name in rows:
            print(f"[{number}/{len(cases)}] {name}: {rows[name].verdict} (finished earlier, kept)", flush=True)
            continue
        print(f"[{number}/{len(cases)}] {name}", flush=True)
        started, case_reports = time.monotonic(), []
        try:
            code = run_one(replace(request, case_dir=case_dir, output_dir=output_dir / name), case_reports)
        except GateInputError as error:
            code, case_reports = EXIT_BAD_INPUT, []
            rows[name] = CaseRow(name, "ERROR", str(error), None, time.monotonic() - started)
        else:
            rows[name] = _row(name, code, case_reports[0] if case_reports else None, time.monotonic() - started)
        reports.extend(case_reports)
        print(f"[{number}/{len(cases)}] {name}: {rows[name].verdict} in {rows[name].seconds:.0f} s", flush=True)
        _save_state(state_path, rows)
    ordered = [rows[case_dir.name] for case_dir in cases]
    print_folder_table(ordered, f"goldtron gate: {root} ({len(cases)} cases)")
    (output_dir / "summary.md").write_text(folder_markdown(ordered))
    if reports:
        (output_dir / "junit.xml").write_text(junit_xml(reports))
    return EXIT_PASS if all(row.verdict == "PASS" for row in ordered) else EXIT_FAIL


def folder_markdown(rows: list[CaseRow]) -> str:
    lines = ["| case | verdict | worst rel. diff | time | why |", "|---|---|---|---|---|"]
    for row in rows:
        worst = "-" if row.worst_relative_difference is None else f"{row.worst_relative_difference:.2g}"
        lines.append(f"| {row.case} | {row.verdict} | {worst} | {row.seconds:.0f} s | {row.why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
