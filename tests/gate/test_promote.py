"""Issue 11: `goldtron golden promote` refreshes a golden from a run only within the approximate
band (or with --force), prints a drift score per metric, and writes provenance. In-process."""

from __future__ import annotations

import pytest

from goldtron.gate import commands
from goldtron.gate.golden import load_golden, write_golden
from goldtron.gate.provenance import read_sidecar, write_sidecar

from .conftest import series, write_case

CALIBRATION = {"workload": "lm-head-512x128x25152-fp32-1thread-v1", "seconds": 0.25}


def values(loss: float, seconds: float = 2.0) -> dict:
    return {"lm loss": series({step: loss - step / 100 for step in range(1, 11)}),
            "num-zeros": series({step: 0.0 for step in range(1, 11)}),
            "iteration-time": series({step: seconds for step in range(1, 11)})}


@pytest.fixture
def setup(tmp_path):
    case = write_case(tmp_path / "case", top={"METRICS": ["lm loss", "num-zeros", "iteration-time"]})
    golden = write_golden(case / "golden_values_dev_cpu_x.json", values(10.0))
    write_sidecar(golden, {"platform": "cpu_x", "calibration": CALIBRATION})
    return case, golden, tmp_path / "run"


def run_output(run_dir, loss: float, seconds: float = 2.0):
    path = write_golden(run_dir / "actual_values" / "golden_values_dev_cpu_x.json", values(loss, seconds))
    write_sidecar(path, {"platform": "cpu_x", "recorded_on_platform": "cpu_x", "calibration": CALIBRATION,
                         "goldtron_commit": "abc"})


def test_promote_accepts_a_run_within_the_band(setup, capsys):
    case, golden, run_dir = setup
    run_output(run_dir, 10.01)  # 0.1% off: inside Megatron's 5% band, outside exact
    assert commands.golden_main(["promote", str(run_dir), str(case)]) == 0
    out = capsys.readouterr().out
    assert "lm loss" in out and "drift" in out and "OUTSIDE" not in out
    assert load_golden(golden)["lm loss"].values[1] == pytest.approx(10.0)  # 10.01 - 0.01
    record = read_sidecar(golden)
    assert record["promoted_from"] == str(run_dir.resolve()) and record["forced"] is False
    assert record["drift"]["lm loss"] == pytest.approx(0.01 / (0.05 * 9.9), rel=1e-3)  # worst step (10) / band
    assert record["goldtron_commit"] == "abc" and record["compared_with"] == golden.name


def test_promote_refuses_drift_unless_forced(setup, capsys):
    case, golden, run_dir = setup
    before = golden.read_text()
    run_output(run_dir, 11.0)  # 10% off every step
    assert commands.golden_main(["promote", str(run_dir), str(case)]) == 1
    out = capsys.readouterr().out
    assert "lm loss" in out and "OUTSIDE THE BAND" in out and "refused" in out and "--force" in out
    assert golden.read_text() == before
    assert commands.golden_main(["promote", str(run_dir), str(case), "--force"]) == 0
    assert load_golden(golden)["lm loss"].values[1] == pytest.approx(10.99)
    assert read_sidecar(golden)["forced"] is True


def test_promote_into_a_family_compares_in_calibrated_units(setup, capsys):
    case, golden, run_dir = setup
    run_output(run_dir, 10.0, seconds=4.0)  # twice the time on a machine that is twice as slow
    run_file = run_dir / "actual_values" / "golden_values_dev_cpu_x.json"
    write_sidecar(run_file, {"platform": "cpu_x", "calibration": dict(CALIBRATION, seconds=0.5)})
    portable = write_golden(case / "golden_values_dev_cpu.json", values(10.0))
    write_sidecar(portable, {"platform": "cpu", "calibration": CALIBRATION})
    golden.unlink()
    assert commands.golden_main(["promote", str(run_dir), str(case)]) == 0  # judged against the cpu family
    assert "portable golden of the cpu family" in capsys.readouterr().out
    assert read_sidecar(case / "golden_values_dev_cpu_x.json")["drift"]["iteration-time"] == 0


def test_promote_needs_a_finished_run(setup):
    case, _, run_dir = setup
    assert commands.golden_main(["promote", str(run_dir), str(case)]) == 2
    path = write_golden(run_dir / "actual_values" / "golden_values_dev_cpu_x.json", values(10.0))
    assert commands.golden_main(["promote", str(run_dir), str(case)]) == 2  # no provenance: refused
    assert path.is_file()
