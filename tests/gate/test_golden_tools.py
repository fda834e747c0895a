"""`goldtron golden from-tensorboard | diff | validate | stats`, bands, and the provenance sidecar."""

from __future__ import annotations

import json

import pytest

from goldtron.gate import commands
from goldtron.gate.case import load_case
from goldtron.gate.golden import golden_from_scalars, load_golden, write_golden
from goldtron.gate.golden_choice import choose_golden
from goldtron.gate.judging import load_reference
from goldtron.gate.provenance import provenance, read_sidecar, write_sidecar
from goldtron.gate.stats import load_bands

from .conftest import reference_dir, write_case


@pytest.fixture
def tensorboard_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 13):
        writer.add_scalar("lm loss", 11.0 - 0.25 * step, step)
        writer.add_scalar("num-zeros", float(step % 3), step)
        writer.add_scalar("grad-norm", 1.0, step)
    writer.close()
    return tmp_path / "tb"


def test_from_tensorboard_uses_megatron_grid_and_metrics(tensorboard_dir, tmp_path):
    out = tmp_path / "g.json"
    assert commands.golden_main(["from-tensorboard", str(tensorboard_dir), "--out", str(out), "--step-interval", "5"]) == 0
    golden = load_golden(out)
    assert list(golden) == ["lm loss", "num-zeros"]  # Megatron's recorded metrics only, in its order
    assert list(golden["lm loss"].values) == [1, 5, 10] and golden["lm loss"].values[5] == 9.75
    assert commands.golden_main(["from-tensorboard", str(tensorboard_dir), "--out", str(out), "--metrics", "absent"]) == 2


def test_diff_reports_first_and_largest_difference(tmp_path, capsys):
    a = write_golden(tmp_path / "a.json", golden_from_scalars({"lm loss": {1: 1.0, 2: 2.0, 3: 3.0}}))
    b = write_golden(tmp_path / "b.json", golden_from_scalars({"lm loss": {1: 1.0, 2: 2.2, 3: 3.0}}))
    assert commands.golden_main(["diff", str(a), str(a)]) == 0
    assert commands.golden_main(["diff", str(a), str(b)]) == 1
    assert "1 of 3 steps differ; first at step 2 (2.0 vs 2.2)" in capsys.readouterr().out


def test_validate_walks_folders_and_names_every_bad_file(tmp_path, capsys):
    write_golden(tmp_path / "case_a" / "golden_values_dev_x.json", golden_from_scalars({"lm loss": {1: 1.0}}))
    bad = tmp_path / "case_b" / "golden_values_dev_y.json"
    bad.parent.mkdir()
    bad.write_text('{"lm loss": {"start_step": 1, "values": {}}}')
    assert commands.golden_main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {bad}: metric 'lm loss': missing key(s) end_step, step_interval" in out and "1 of 2" in out
    assert commands.golden_main(["validate", str(reference_dir())]) == 0


def test_stats_and_bands(tmp_path, capsys):
    runs = []
    for index, loss in enumerate((10.0, 10.2, 9.8)):
        runs.append(str(write_golden(tmp_path / f"run{index}.json", golden_from_scalars({"lm loss": {1: loss, 2: loss - 1}}))))
    out = tmp_path / "stats.json"
    assert commands.golden_main(["stats", *runs, "--out", str(out)]) == 0
    statistics = json.loads(out.read_text())["lm loss"]
    assert statistics["steps"]["1"]["mean"] == pytest.approx(10.0) and statistics["steps"]["1"]["max"] == 10.2
    # Largest relative deviation is at step 2 (0.2 / 9.0), times Megatron's 1.5 safety factor.
    assert statistics["suggested_rtol"] == pytest.approx(0.2 / 9.0 * 1.5)
    bands = load_bands(out)
    assert bands["lm loss"][1][0] == pytest.approx(10.0) and bands["lm loss"][1][1] > 0
    assert commands.golden_main(["stats", runs[0], "--out", str(out)]) == 2  # one run has no spread

    # A case judged by bands needs no golden file of its own.
    case = load_case(write_case(tmp_path / "banded", goldtron={"BANDS": {"STATS": str(out), "SIGMAS": 2}}))
    reference = load_reference(case, choose_golden(case, "dev", "cpu_x", forced=False), recording=False)
    assert reference.golden is None and reference.bands == bands and case.bands_sigmas == 2


def test_provenance_sidecar_keeps_golden_loadable(tmp_path):
    golden_path = write_golden(tmp_path / "golden_values_dev_cpu_x.json", golden_from_scalars({"lm loss": {1: 1.0}}))
    write_sidecar(golden_path, provenance("dev", "cpu_x", ["goldtron", "test"], tmp_path))
    record = read_sidecar(golden_path)
    assert record["platform"] == "cpu_x" and record["torch"] and record["device"].startswith("CPU")
    assert load_golden(golden_path)  # the golden itself is untouched Megatron schema
    assert [p.name for p in tmp_path.glob("golden_values_*.json")] == [golden_path.name]
