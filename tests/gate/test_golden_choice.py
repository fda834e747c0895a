"""Issue 11: the golden resolution chain (platform, then the family's portable golden, then a clear
error), the cross-platform tolerances it brings, calibrated iteration-time, Megatron's older list
schema, and bad golden input. In-process: no training runs."""

from __future__ import annotations

import json

import pytest

from goldtron.gate.case import load_case
from goldtron.gate.checks import judge
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import golden_text, load_golden, parse_golden, write_golden
from goldtron.gate.golden_choice import choose_golden, platform_family
from goldtron.gate.judging import load_reference, scaled
from goldtron.gate.portable import PORTABLE_DEFAULTS
from goldtron.gate.provenance import write_sidecar

from .conftest import series, write_case

METRICS = ["lm loss", "num-zeros", "iteration-time"]
CALIBRATION = {"workload": "lm-head-512x128x25152-fp32-1thread-v1", "seconds": 0.25}


def golden(loss: float = 10.0, zeros: float = 0.0, seconds: float = 2.0) -> dict:
    return {"lm loss": series({step: loss - step / 100 for step in range(1, 11)}),
            "num-zeros": series({step: zeros for step in range(1, 11)}),
            "iteration-time": series({step: seconds for step in range(1, 11)})}


@pytest.fixture
def case(tmp_path):
    return load_case(write_case(tmp_path / "case", top={"METRICS": METRICS},
                                goldtron={"TOLERANCES": {"iteration-time": {"approx_rtol": 1.0}}}))


def put(case, name: str, values: dict, record: dict | None = None):
    path = write_golden(case.path / name, values)
    write_sidecar(path, record if record is not None else {"platform": name, "recorded_on_platform": "cpu_intel_avx512",
                                                           "calibration": CALIBRATION})
    return path


def test_family_of_a_platform():
    assert platform_family("cpu_amd_avx2") == "cpu" and platform_family("cpu_intel_avx512") == "cpu"
    assert platform_family("dgx_h100") == "dgx" and platform_family("cpu") is None and platform_family("tpu_v5") is None


def test_chain_prefers_the_platform_golden_then_the_family_then_fails(case):
    put(case, "golden_values_dev_cpu.json", golden())
    put(case, "golden_values_dev_cpu_intel_avx512.json", golden())
    own = choose_golden(case, "dev", "cpu_intel_avx512", forced=False)
    assert own.path.name == "golden_values_dev_cpu_intel_avx512.json" and not own.portable
    assert "recorded on this platform (cpu_intel_avx512)" in own.reason

    family = choose_golden(case, "dev", "cpu_amd_avx2", forced=False)
    assert family.path.name == "golden_values_dev_cpu.json" and family.portable and family.family == "cpu"
    assert "portable golden of the cpu family, recorded on cpu_intel_avx512" in family.reason
    assert "no golden_values_dev_cpu_amd_avx2.json" in family.reason

    (case.path / "golden_values_dev_cpu.json").unlink()
    missing = choose_golden(case, "dev", "cpu_amd_avx2", forced=False)
    assert not missing.exists and "no golden_values_dev_cpu.json for its family" in missing.reason
    with pytest.raises(GateInputError, match="no golden file golden_values_dev_cpu_amd_avx2.json.*existing: "
                                             "golden_values_dev_cpu_intel_avx512.json"):
        load_reference(case, missing, recording=False)


def test_forced_platform_takes_that_file_only(case):
    put(case, "golden_values_dev_cpu.json", golden())
    forced = choose_golden(case, "dev", "cpu_amd_avx2", forced=True)
    assert forced.path.name == "golden_values_dev_cpu_amd_avx2.json" and not forced.exists  # no fallback
    family = choose_golden(case, "dev", "cpu", forced=True)
    assert family.portable and "forced by --platform cpu" in family.reason


def test_portable_golden_brings_cross_platform_tolerances(case):
    put(case, "golden_values_dev_cpu.json", golden())
    reference = load_reference(case, choose_golden(case, "dev", "cpu_amd_avx2", False), False, CALIBRATION)
    assert reference.tolerances["lm loss"] == PORTABLE_DEFAULTS["cpu"]["lm loss"]
    assert reference.tolerances["iteration-time"]["approx_rtol"] == 0.5  # replaces the case's 1.0
    # A 1-ulp-like loss difference and one extra zero pass; a real bug does not.
    near = golden(loss=10.0 + 2e-5, zeros=1)
    assert judge(reference.golden, near, METRICS, reference.tolerances).passed
    broken = judge(reference.golden, golden(loss=10.0 + 1e-3), METRICS, reference.tolerances)
    assert [r.metric for r in broken.failures()] == ["lm loss"]
    zeros = judge(reference.golden, golden(zeros=5_000_000), METRICS, reference.tolerances)
    assert [r.metric for r in zeros.failures()] == ["num-zeros"]
    # The platform golden of the same values keeps Megatron's exact checks.
    put(case, "golden_values_dev_cpu_amd_avx2.json", golden())
    own = load_reference(case, choose_golden(case, "dev", "cpu_amd_avx2", False), False, CALIBRATION)
    assert not judge(own.golden, near, METRICS, own.tolerances).passed


def test_iteration_time_in_calibrated_units(case):
    put(case, "golden_values_dev_cpu.json", golden(seconds=2.0))
    slower_machine = dict(CALIBRATION, seconds=0.5)  # this machine is 2x slower than the golden's
    reference = load_reference(case, choose_golden(case, "dev", "cpu_amd_avx2", False), False, slower_machine)
    assert reference.time_scale == pytest.approx(0.5)
    assert any("calibrated units" in note for note in reference.notes)
    same_code = scaled(golden(seconds=4.0), "iteration-time", reference.time_scale)
    assert judge(reference.golden, same_code, METRICS, reference.tolerances).passed
    twice_as_slow = scaled(golden(seconds=8.0), "iteration-time", reference.time_scale)
    failed = judge(reference.golden, twice_as_slow, METRICS, reference.tolerances).failures()
    assert [r.metric for r in failed] == ["iteration-time"]


def test_bad_portable_golden_input(case):
    path = put(case, "golden_values_dev_cpu.json", {"lm loss": golden()["lm loss"]})
    choice = choose_golden(case, "dev", "cpu_amd_avx2", False)
    with pytest.raises(GateInputError, match=r"portable golden lacks 'num-zeros', 'iteration-time'.*--record --platform cpu"):
        load_reference(case, choice, False, CALIBRATION)
    put(case, "golden_values_dev_cpu.json", golden(), record={"platform": "cpu"})  # sidecar without calibration
    with pytest.raises(GateInputError, match=r"no calibration \(field 'calibration.seconds'\)"):
        load_reference(case, choice, False, CALIBRATION)
    put(case, "golden_values_dev_cpu.json", golden(), record={"calibration": dict(CALIBRATION, workload="other-v0")})
    with pytest.raises(GateInputError, match="calibration workload 'other-v0'.*the units differ"):
        load_reference(case, choice, False, CALIBRATION)
    assert path.is_file()


def test_a_family_without_measured_tolerances_needs_the_case_to_give_them(tmp_path):
    case = load_case(write_case(tmp_path / "gpu", top={"METRICS": ["lm loss"]}))
    put(case, "golden_values_dev_dgx.json", {"lm loss": golden()["lm loss"]})
    choice = choose_golden(case, "dev", "dgx_h100", False)
    assert choice.portable
    with pytest.raises(GateInputError, match="measured them only for cpu.*PORTABLE_TOLERANCES"):
        load_reference(case, choice, False)
    given = load_case(write_case(tmp_path / "gpu2", top={"METRICS": ["lm loss"]},
                                 goldtron={"PORTABLE_TOLERANCES": {"lm loss": {"exact": False, "approx_rtol": 0.01}}}))
    put(given, "golden_values_dev_dgx.json", {"lm loss": golden()["lm loss"]})
    reference = load_reference(given, choose_golden(given, "dev", "dgx_h100", False), False)
    assert reference.tolerances["lm loss"] == {"exact": False, "approx_rtol": 0.01}


def test_bad_portable_tolerances_are_refused_naming_the_field(tmp_path):
    with pytest.raises(GateInputError, match=r"GOLDTRON.PORTABLE_TOLERANCES: .*'lm loss'.*approx_rtol = -1"):
        load_case(write_case(tmp_path / "bad", goldtron={"PORTABLE_TOLERANCES": {"lm loss": {"approx_rtol": -1}}}))


def test_older_list_schema_loads_and_rewrites_byte_for_byte(tmp_path):
    text = json.dumps({"lm loss": {"start_step": 0, "end_step": 20, "step_interval": 5,
                                   "values": [10.84, 10.79, "nan", 10.62, 10.5]}})
    path = tmp_path / "golden_values_lts.json"
    path.write_text(text)
    loaded = load_golden(path)
    assert loaded["lm loss"].values == {0: 10.84, 5: 10.79, 10: "nan", 15: 10.62, 20: 10.5}
    assert golden_text(loaded, "compact") == text
    with pytest.raises(GateInputError, match=r"values\['1'\].*expected a number"):
        parse_golden({"lm loss": {"start_step": 0, "end_step": 5, "step_interval": 5, "values": [1.0, True]}}, "f")


def test_calibration_times_a_real_workload_and_is_needed_for_a_portable_golden(case):
    from goldtron.gate.calibration import time_workload

    assert 0 < time_workload(repeats=1) < 600  # a bound only against a hang, not a speed test
    put(case, "golden_values_dev_cpu.json", golden())
    reference = load_reference(case, choose_golden(case, "dev", "cpu_amd_avx2", False), False)
    assert reference.time_scale is None  # set once this machine's calibration is timed
    with pytest.raises(GateInputError, match="needs this machine's calibration"):
        reference.use_calibration(None)



def test_one_calibration_process_serves_every_timing_and_a_dead_one_is_reported(tmp_path):
    from goldtron.gate.calibration import WORKLOAD, Calibrator

    with Calibrator() as calibrator:
        first = calibrator.measure(repeats=1)
        child = calibrator._process.pid
        second = calibrator.measure(repeats=1)
        assert calibrator._process.pid == child  # torch imported once for both timings
    assert calibrator._process is None and first["workload"] == second["workload"] == WORKLOAD
    assert 0 < second["seconds"] < 600  # a bound only against a hang, not a speed test
    broken = tmp_path / "python"  # an interpreter that dies at start, saying why on stderr
    broken.write_text("#!/bin/sh\necho 'no torch here' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="calibration workload failed: it exited: no torch here"):
        Calibrator(python=str(broken)).measure()
