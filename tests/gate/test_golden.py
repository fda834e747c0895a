"""Golden files: Megatron's schema, its byte layout, and errors that name file and field."""

from __future__ import annotations

import json

import pytest

from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import (
    detect_layout, golden_from_scalars, golden_text, load_golden, pad_before, round_value, write_golden,
)

from .conftest import reference_dir


def reference_goldens():
    return sorted(reference_dir().glob("*/golden_values_*.json"))


def test_every_reference_golden_loads_and_rewrites_byte_for_byte():
    files = reference_goldens()
    assert len(files) > 50  # the reference sample holds 80 goldens; a wrong glob must not pass
    for path in files:
        text = path.read_text()
        golden = load_golden(path)
        assert golden_text(golden, detect_layout(text)) == text, path


def test_second_run_golden_keeps_nan_strings():
    path = next(p for p in reference_goldens() if p.name.endswith("_2nd.json"))
    series = load_golden(path)["lm loss"]
    assert series.values[1] == "nan" and series.numeric(1) == float("inf")
    assert isinstance(series.values[series.end_step], float)


def test_written_golden_reads_back_identical(tmp_path):
    golden = golden_from_scalars({"lm loss": {1: 10.123456789, 2: 9.87654321, 3: float("nan")},
                                  "num-zeros": {1: 12.0, 2: 0.0, 3: 7.0}})
    path = write_golden(tmp_path / "golden_values_dev_cpu_avx512.json", golden)
    text = path.read_text()
    assert text.startswith('{\n    "lm loss": {\n        "start_step": 1,') and not text.endswith("\n")
    assert json.loads(text)["lm loss"]["values"] == {"1": 10.12346, "2": 9.87654, "3": "nan"}
    assert load_golden(path) == golden


def test_rounding_is_pythons_round_to_five_decimals():
    assert round_value(1.234565) == round(1.234565, 5)
    assert round_value(3) == 3.0 and isinstance(round_value(3), float)
    assert round_value(float("inf")) == "nan"


def test_sampling_grid_is_start_step_then_multiples_of_interval():
    scalars = {"lm loss": {step: float(step) for step in range(1, 13)}}
    series = golden_from_scalars(scalars, step_interval=5)["lm loss"]
    assert list(series.values) == [1, 5, 10]
    assert (series.start_step, series.end_step, series.step_interval) == (1, 10, 5)
    assert list(golden_from_scalars(scalars, last_step=3)["lm loss"].values) == [1, 2, 3]


def test_pad_before_marks_steps_run_two_did_not_train():
    run2 = golden_from_scalars({"lm loss": {6: 1.0, 7: 2.0}})["lm loss"]
    padded = pad_before(run2, first_step=6)
    assert padded.values == {1: "nan", 2: "nan", 3: "nan", 4: "nan", 5: "nan", 6: 1.0, 7: 2.0}


@pytest.mark.parametrize("content, expected", [
    ('{"lm loss": {"start_step": 1, "end_step": 2, "values": {"1": 1.0}}}', "missing key(s) step_interval"),
    ('{"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"1": "abc"}}}', "values['1']"),
    ('{"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"x": 1.0}}}', "step key 'x'"),
    ('{"lm loss": {"start_step": "1", "end_step": 2, "step_interval": 1, "values": {}}}', "'start_step'"),
    ('{"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 0, "values": {}}}', "must be positive"),
    ('{"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"1": true}}}', "values['1']"),
    ('[1, 2]', "top level"),
    ('{"lm loss": 3}', "metric 'lm loss'"),
    ('{"lm loss": ', "not valid JSON"),
])
def test_bad_golden_names_file_and_field(tmp_path, content, expected):
    path = tmp_path / "golden_values_dev_x.json"
    path.write_text(content)
    with pytest.raises(GateInputError) as error:
        load_golden(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_missing_golden_says_how_to_record(tmp_path):
    with pytest.raises(GateInputError, match="--record"):
        load_golden(tmp_path / "absent.json")
