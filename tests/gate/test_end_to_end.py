"""The gate end to end on CPU: torchrun + gloo + the fake trainer, record then judge.

One ckpt-resume golden is recorded once for the module; the regular cases reuse it, since
run 1 of ckpt-resume and a regular run with the same flags train the same steps.
"""

from __future__ import annotations

import json
import shutil

import pytest

from goldtron.gate import commands
from goldtron.gate.golden import load_golden
from goldtron.gate.platform import detect_platform

from .conftest import write_case

pytestmark = pytest.mark.slow
GOLDEN = f"golden_values_dev_{detect_platform()}.json"
SECOND = GOLDEN.replace(".json", "_2nd.json")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    case = write_case(root / "resume_case", "ckpt-resume")
    code = commands.test_main([str(case), "--record", "--output-dir", str(root / "out_record"), "--no-plot"])
    assert code == 0
    return root, case


def copy_goldens(source, target):
    for name in (GOLDEN, SECOND):
        if (source / name).exists():
            shutil.copy(source / name, target / name)


def test_record_writes_megatron_goldens_and_provenance(recorded):
    root, case = recorded
    golden = load_golden(case / GOLDEN)
    assert list(golden) == ["lm loss", "num-zeros", "mem-allocated-bytes", "mem-max-allocated-bytes", "iteration-time"]
    assert list(golden["lm loss"].values) == list(range(1, 11))
    second = load_golden(case / SECOND)["lm loss"]
    assert [second.values[s] for s in range(1, 6)] == ["nan"] * 5 and isinstance(second.values[6], float)
    provenance = json.loads((case / (GOLDEN + ".provenance")).read_text())
    assert provenance["platform"] == detect_platform() and "--record" in provenance["command"]


def test_ckpt_resume_passes_against_its_golden(recorded, capsys):
    root, case = recorded
    out = root / "out_pass"
    assert commands.test_main([str(case), "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "run 2 vs run 1" in text and "run 1 vs golden" in text and f"PASS {case.name}" in text
    # Reports: markdown, JUnit, PNG, and the actual values ready to promote (identical to the golden).
    assert "**PASS**" in (out / "summary.md").read_text()
    assert 'failures="0"' in (out / "junit.xml").read_text()
    assert (out / f"{case.name}.png").stat().st_size > 1000
    promoted, golden = load_golden(out / "actual_values" / GOLDEN), load_golden(case / GOLDEN)
    for metric in ("lm loss", "num-zeros"):  # timings differ from run to run, the training does not
        assert promoted[metric] == golden[metric]


def test_regular_case_passes_and_perturbed_lr_fails_naming_metric_and_step(recorded, capsys):
    root, resume_case = recorded
    regular = write_case(root / "regular_case", "regular")
    copy_goldens(resume_case, regular)
    assert commands.test_main([str(regular), "--output-dir", str(root / "out_regular"), "--no-plot"]) == 0

    perturbed = write_case(root / "perturbed_case", "regular", extra_args={"--lr": 0.00101})
    copy_goldens(resume_case, perturbed)
    capsys.readouterr()
    out = root / "out_perturbed"
    assert commands.test_main([str(perturbed), "--output-dir", str(out), "--no-plot"]) == 1
    text = capsys.readouterr().out
    # The lr only scales the decay, so step 1 already differs in the 5th decimal: exact fails there.
    assert "'lm loss' exact fail first diverging at step 1" in text
    junit = (out / "junit.xml").read_text()
    assert 'failures="1"' in junit and "first diverging step 1" in junit


def test_repeats_must_all_pass_and_feed_statistics(recorded):
    root, resume_case = recorded
    regular = write_case(root / "repeat_case", "regular", top={"N_REPEAT": 2})
    copy_goldens(resume_case, regular)
    out = root / "out_repeat"
    assert commands.test_main([str(regular), "--output-dir", str(out), "--no-plot"]) == 0
    statistics = json.loads((out / "statistics.json").read_text())
    # Two bitwise-identical repeats: zero spread, zero suggested tolerance.
    assert statistics["lm loss"]["runs"] == 2 and statistics["lm loss"]["suggested_rtol"] == 0.0
    assert (out / "repeat_2" / "run1" / "torchrun.log").exists()


def test_missing_golden_fails_and_lists_existing_ones(tmp_path, capsys):
    case = write_case(tmp_path / "no_golden_case")
    (case / "golden_values_lts_dgx_a100.json").write_text("{}")
    assert commands.test_main([str(case), "--output-dir", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"no golden file {GOLDEN}" in out and "golden_values_lts_dgx_a100.json" in out and "--record" in out
    assert not (tmp_path / "out").exists()  # nothing was launched


def test_frozen_resume_trains_on_from_a_stored_checkpoint(recorded, capsys):
    from goldtron.gate.runner import prepare_resume

    root, resume_case = recorded
    stored = root / "stored_checkpoint"
    shutil.copytree(root / "out_record" / "repeat_1" / "checkpoints", stored)
    prepare_resume(stored, 5)  # as if frozen after iteration 5
    frozen = write_case(root / "frozen_case", "frozen-resume", goldtron={"FROZEN_CHECKPOINT": str(stored)})
    # Steps 6-10 of the uninterrupted run, "nan" before: exactly the recorded _2nd golden.
    shutil.copy(resume_case / SECOND, frozen / GOLDEN)
    assert commands.test_main([str(frozen), "--output-dir", str(root / "out_frozen"), "--no-plot"]) == 0
    assert (stored / "latest_checkpointed_iteration.txt").read_text() == "5"  # the stored one is only read
