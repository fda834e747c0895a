"""`goldtron test ROOT` over a folder of cases (gate/folder_run.py): one row per case, the
trainer's refusal named, and a run killed half-way goes on where it stopped."""

from __future__ import annotations

import json

import pytest

from goldtron.gate.exam import TestRequest as GateRequest  # not a pytest class
from goldtron.gate.folder_run import STATE_FILE, run_folder
from goldtron.gate.interrupts import GateInterrupted
from goldtron.gate.report import CaseReport

from .conftest import write_case


def _folder(tmp_path):
    for name in ("a_passes", "b_refused", "c_fails"):
        write_case(tmp_path / "cases" / name)
    return tmp_path / "cases"


class FakeGate:
    """Stands in for one case's `goldtron test`: a verdict per case name, and a record of calls."""

    def __init__(self, interrupt_at: str | None = None):
        self.ran, self.interrupt_at = [], interrupt_at

    def __call__(self, request, reports):
        name = request.case_dir.name
        if name == self.interrupt_at:
            raise GateInterrupted(15)
        self.ran.append(name)
        report = CaseReport(case=name)
        reports.append(report)
        if name == "b_refused":
            report.errors.append("the trainer rejected the configuration\n  goldtron train: --num-experts: a Megatron "
                                 "flag goldtron does not implement (mixture of experts); remove it.")
            return 2
        if name == "c_fails":
            report.errors.append("run 1 crashed")
            return 1
        return 0


def test_each_case_gets_a_row_and_a_refusal_names_its_flag(tmp_path):
    root = _folder(tmp_path)
    gate = FakeGate()
    code = run_folder(GateRequest(root, output_dir=tmp_path / "out"), gate)
    assert code == 1 and gate.ran == ["a_passes", "b_refused", "c_fails"]
    rows = {row["case"]: row for row in json.loads((tmp_path / "out" / STATE_FILE).read_text())["rows"]}
    assert [rows[name]["verdict"] for name in sorted(rows)] == ["PASS", "REFUSED", "FAIL"]
    assert "--num-experts" in rows["b_refused"]["why"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| b_refused | REFUSED |" in summary
    assert (tmp_path / "out" / "junit.xml").is_file()


def test_a_killed_folder_run_goes_on_where_it_stopped(tmp_path):
    root = _folder(tmp_path)
    first = FakeGate(interrupt_at="b_refused")
    with pytest.raises(GateInterrupted):
        run_folder(GateRequest(root, output_dir=tmp_path / "out"), first)
    assert first.ran == ["a_passes"]
    again = FakeGate()
    run_folder(GateRequest(root, output_dir=tmp_path / "out"), again)
    assert again.ran == ["b_refused", "c_fails"]  # a_passes finished before: not run again
    rows = json.loads((tmp_path / "out" / STATE_FILE).read_text())["rows"]
    assert sorted(row["case"] for row in rows) == ["a_passes", "b_refused", "c_fails"]
