"""Turn verdicts into what people and CI read: a terminal table, Markdown, JUnit XML.

One row per metric and check: status, steps compared, worst step and difference, tolerance,
and the first step where the run leaves its reference. PNG plots live in plots.py.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from goldtron.gate.checks import CheckResult, Verdict

STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "bold magenta"}
COLUMNS = ("comparison", "metric", "check", "status", "steps", "failed/allowed", "worst step",
           "actual", "reference", "worst diff", "tolerance", "first divergence")


@dataclass
class Judgement:
    """One comparison of a case: e.g. "run 1 vs golden" or "run 2 vs run 1"."""

    name: str
    verdict: Verdict


@dataclass
class CaseReport:
    case: str
    judgements: list[Judgement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # phase failures, missing goldens, ...
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and all(j.verdict.passed for j in self.judgements)

    def summary_line(self) -> str:
        if self.passed:
            return f"PASS {self.case}"
        reasons = list(self.errors)
        for judgement in self.judgements:
            for result in judgement.verdict.failures():
                where = f" first diverging at step {result.first_divergence}" if result.first_divergence else ""
                reasons.append(f"{judgement.name}: {result.metric!r} {result.check.kind} {result.status}{where}")
        return f"FAIL {self.case}: " + "; ".join(reasons)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "nan/missing"
    return f"{value:.6g}"


def _difference(result: CheckResult) -> str:
    if result.worst_difference is None:
        return "-"
    if math.isinf(result.worst_difference):
        return "inf"
    if result.check.kind == "exact":
        return f"{result.worst_difference:.3g}"
    return f"{100 * result.worst_difference:.3g}%"


def result_row(comparison: str, result: CheckResult) -> tuple[str, ...]:
    compared = result.status in ("pass", "fail")
    return (
        comparison, result.metric, result.check.kind, result.status.upper(),
        str(result.steps_compared) if compared else "-",
        f"{result.steps_failed}/{result.failures_allowed}" if compared else "-",
        str(result.worst_step) if compared and result.worst_step is not None else "-",
        _number(result.worst_actual) if compared else "-",
        _number(result.worst_reference) if compared else "-",
        _difference(result) if compared else "-",
        result.tolerance,
        str(result.first_divergence) if result.first_divergence is not None else "-",
    )


def print_table(report: CaseReport, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the 12 columns when the output is a log file rather than a terminal.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"goldtron gate: {report.case}", show_lines=False)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for judgement in report.judgements:
        for result in judgement.verdict.results:
            row = list(result_row(judgement.name, result))
            style = STATUS_STYLE[result.status]
            row[3] = f"[{style}]{row[3]}[/{style}]"
            table.add_row(*row)
    console.print(table)
    for judgement in report.judgements:
        for result in judgement.verdict.results:
            if result.status == "error":
                console.print(f"[bold magenta]error[/] {judgement.name}: {result.message}", soft_wrap=True)
    for note in report.notes:
        console.print(f"[yellow]note[/] {note}", soft_wrap=True)
    for error in report.errors:
        console.print(f"error: {error}", style="bold red", soft_wrap=True, markup=False)
    style = "bold green" if report.passed else "bold red"
    # soft_wrap: one line per verdict, so logs and greps see it whole.
    console.print(report.summary_line(), style=style, soft_wrap=True, markup=False)


def markdown(report: CaseReport) -> str:
    lines = [f"# goldtron gate: {report.case}", "", f"**{'PASS' if report.passed else 'FAIL'}**", ""]
    if report.errors:
        lines += ["## Errors", ""] + [f"- {error}" for error in report.errors] + [""]
    if report.judgements:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for judgement in report.judgements:
            for result in judgement.verdict.results:
                lines.append("| " + " | ".join(result_row(judgement.name, result)) + " |")
        lines.append("")
    failures = [(j.name, r) for j in report.judgements for r in j.verdict.failures()]
    if failures:
        lines += ["## Why it failed", ""] + [f"- {name}: {result.message}" for name, result in failures] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)


def junit_xml(reports: list[CaseReport]) -> str:
    """JUnit XML: one testsuite per case, one testcase per comparison, metric and check."""
    suites = ElementTree.Element("testsuites", name="goldtron gate")
    for report in reports:
        cases = [(j.name, r) for j in report.judgements for r in j.verdict.results]
        suite = ElementTree.SubElement(suites, "testsuite", name=report.case, tests=str(len(cases) + len(report.errors)),
                                       failures=str(sum(r.status == "fail" for _, r in cases)),
                                       errors=str(sum(r.status == "error" for _, r in cases) + len(report.errors)),
                                       skipped=str(sum(r.status == "skip" for _, r in cases)))
        for index, error in enumerate(report.errors):
            testcase = ElementTree.SubElement(suite, "testcase", classname=report.case, name=f"phase {index}")
            ElementTree.SubElement(testcase, "error", message=error.splitlines()[0]).text = error
        for name, result in cases:
            testcase = ElementTree.SubElement(suite, "testcase", classname=report.case,
                                              name=f"{name}: {result.metric} ({result.check.kind})")
            if result.status == "fail":
                ElementTree.SubElement(testcase, "failure", message=result.message).text = result.message
            elif result.status == "error":
                ElementTree.SubElement(testcase, "error", message=result.message).text = result.message
            elif result.status == "skip":
                ElementTree.SubElement(testcase, "skipped", message=result.message)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(report: CaseReport, output_dir: Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": output_dir / "summary.md", "junit": output_dir / "junit.xml"}
    paths["markdown"].write_text(markdown(report))
    paths["junit"].write_text(junit_xml([report]))
    return paths


VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "REFUSED": "yellow", "ERROR": "bold magenta"}


def print_folder_table(rows, title: str, console=None) -> None:
    """A folder run's table: one row per case (gate/folder_run.py's CaseRow)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=title)
    for column in ("case", "verdict", "worst rel. diff", "time", "why"):
        table.add_column(column, overflow="fold")
    for row in rows:
        worst = "-" if row.worst_relative_difference is None else f"{row.worst_relative_difference:.2g}"
        style = VERDICT_STYLE.get(row.verdict, "")
        table.add_row(row.case, f"[{style}]{row.verdict}[/{style}]", worst, f"{row.seconds:.0f} s", row.why)
    console.print(table)
