"""`goldtron compare`: exit codes and verdicts on golden files and TensorBoard folders."""

from __future__ import annotations

from goldtron.gate.commands import compare_main
from goldtron.gate.golden import golden_from_scalars, write_golden

from .conftest import reference_dir

SEED_CASE = "gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute"


def test_golden_against_itself_passes():
    golden = reference_dir() / SEED_CASE / "golden_values_dev_dgx_h100.json"
    assert compare_main(["--golden", str(golden), "--actual", str(golden)]) == 0


def test_other_platform_fails_and_names_metric(capsys):
    case = reference_dir() / SEED_CASE
    code = compare_main(["--golden", str(case / "golden_values_dev_dgx_h100.json"),
                         "--actual", str(case / "golden_values_dev_dgx_gb200.json"), "--metrics", "lm loss"])
    assert code == 1
    assert "'lm loss' exact fail" in capsys.readouterr().out


def test_tensorboard_folder_as_actual(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 6):
        writer.add_scalar("lm loss", 10.0 - 0.1 * step, step)
        writer.add_scalar("num-zeros", float(step), step)
    writer.close()
    scalars = {"lm loss": {s: 10.0 - 0.1 * s for s in range(1, 6)}, "num-zeros": {s: float(s) for s in range(1, 6)}}
    # TensorBoard stores float32; the golden holds the float64 values rounded to 5 decimals,
    # which equal the float32 ones after rounding (the values are far from a rounding edge).
    golden = write_golden(tmp_path / "g.json", golden_from_scalars(scalars))
    assert compare_main(["--golden", str(golden), "--actual", str(tmp_path / "tb")]) == 0
    scalars["lm loss"][4] += 0.001
    write_golden(golden, golden_from_scalars(scalars))
    assert compare_main(["--golden", str(golden), "--actual", str(tmp_path / "tb")]) == 1
    assert compare_main(["--golden", str(golden), "--actual", str(tmp_path / "tb"), "--allow-nondeterministic"]) == 0


def test_usage_and_input_errors_exit_two(tmp_path, capsys):
    assert compare_main(["--golden", "x.json"]) == 2
    assert compare_main(["--golden", str(tmp_path / "none.json"), "--actual", str(tmp_path)]) == 2
    assert "golden file not found" in capsys.readouterr().err
    golden = write_golden(tmp_path / "g.json", golden_from_scalars({"lm loss": {1: 1.0}}))
    assert compare_main(["--golden", str(golden), "--actual", str(tmp_path / "empty_dir_is_file.json")]) == 2
    (tmp_path / "tbless").mkdir()
    assert compare_main(["--golden", str(golden), "--actual", str(tmp_path / "tbless")]) == 2
    assert "no TensorBoard event file" in capsys.readouterr().err
