"""Megatron's run flags of its dense GPT cases, trained: --use-tp-pp-dp-mapping (another rank order,
the same training), --check-weight-hash-across-dp-replicas-interval (catches a replica whose weights
differ), sample-based schedules (the same run as in iterations) and --rerun-mode (re-runs leave
training unchanged; a rejected loss stops every rank with Megatron's exit code).

Equality with one process: 1e-5 relative (support/metrics.py says why); the same run in samples
and in iterations, and with or without re-runs, is bitwise the same (same ops, same order).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from goldtron.parallel.trace import TRACE_FOLDER, read_steps
from goldtron.training.main import main as train_main
from goldtron.training.rerun import EXIT_CODE_FAILED_ON_RESULT_VALIDATION, EXIT_CODE_RESUME_TO_DISAMBIGUATE
from support.metrics import assert_same_training
from support.torchrun import (NO_DROPOUT, TINY_MODEL, batched_log, layout_flags, run_script, run_train,
                              train_batches_and_read)

SCRIPTS = Path(__file__).parent / "scripts"
TEN_STEPS = ["--train-iters", "10"]  # the session's single-process run (conftest.py)
PP2_DP2 = TINY_MODEL + NO_DROPOUT + TEN_STEPS + layout_flags(1, 2)


def _in_samples(flags: list[str]) -> list[str]:
    """The same schedule counted in samples: 10 iterations x 8 = 80, warmup 2 x 8 = 16."""
    swap = {"--train-iters": ("--train-samples", "80"), "--lr-warmup-iters": ("--lr-warmup-samples", "16")}
    out, i = [], 0
    while i < len(flags):
        if flags[i] in swap:
            out += list(swap[flags[i]])
            i += 2
        else:
            out.append(flags[i])
            i += 1
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("run_flags")
    timers = ["--log-timers-to-tensorboard"]
    steps = train_batches_and_read(out, {
        "PP2xDP2 tp-dp-pp": (4, PP2_DP2 + timers + ["--tensorboard-dir", str(out / "tb-default")]),
        "PP2xDP2 tp-pp-dp": (4, PP2_DP2 + timers + ["--tensorboard-dir", str(out / "tb-mapping"),
                                                    "--use-tp-pp-dp-mapping",
                                                    "--check-weight-hash-across-dp-replicas-interval", "5"]),
        "in samples": (1, _in_samples(TINY_MODEL + NO_DROPOUT + TEN_STEPS)),
        "report determinism stats": (1, TINY_MODEL + NO_DROPOUT + TEN_STEPS + ["--rerun-mode", "report_stats"]),
        "rerun disabled": (1, TINY_MODEL + NO_DROPOUT + TEN_STEPS + ["--rerun-mode", "disabled"]),
        "dropout": (1, TINY_MODEL + ["--train-iters", "4"]),
        "dropout, report determinism stats": (1, TINY_MODEL + ["--train-iters", "4", "--rerun-mode", "report_stats"]),
    })
    return out, steps


def test_tp_pp_dp_mapping_trains_as_one_process(runs, tiny_single_process):
    _, steps = runs
    assert_same_training(steps["PP2xDP2 tp-pp-dp"], tiny_single_process, "PP2xDP2 tp-pp-dp")


def test_tp_pp_dp_mapping_gives_each_process_megatrons_other_coordinates(runs):
    """Rank r's (pp, dp) as its trace file recorded them: tp-dp-pp puts the DP replicas of a stage
    side by side (rank 1 = stage 0, replica 1); tp-pp-dp puts a pipeline side by side (rank 1 = stage 1)."""
    out, _ = runs

    def coordinates(tb: str) -> dict[int, tuple[int, int]]:
        return {rank: (by_it[1]["pp_rank"], by_it[1]["dp_rank"]) for rank, by_it in read_steps(out / tb / TRACE_FOLDER).items()}

    assert coordinates("tb-default") == {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}
    assert coordinates("tb-mapping") == {0: (0, 0), 1: (1, 0), 2: (0, 1), 3: (1, 1)}


def test_weight_hash_check_runs_at_its_interval_and_replicas_match(runs):
    out, _ = runs
    log = batched_log(out, "PP2xDP2 tp-pp-dp")
    assert "Weight hashes match after 5 iterations" in log and "Weight hashes match after 10 iterations" in log
    assert "after 4 iterations" not in log


def test_weight_hash_check_catches_a_replica_one_ulp_off():
    result = run_script(2, SCRIPTS / "check_weight_hash.py", TINY_MODEL + ["--train-iters", "4"])
    out = result.stdout  # two processes' lines may share one line of the combined output
    assert "OK rank 0 weight" in out and "OK rank 1 weight" in out, out
    start = out.index("OK rank 1 weight")
    replica_1 = out[start:out.index("DP replicas')", start)]
    weight = replica_1.split(" weight ")[1].split(":")[0]
    assert f"replica 1) holds other weights than rank 0 (replica 0) in 1 parameter(s): {weight}" in replica_1
    assert "after iteration 3" in replica_1 and "Parameter hashes not matching across" in replica_1


def test_sample_based_schedule_is_the_iteration_run_bit_for_bit(runs, tiny_single_process):
    _, steps = runs
    keys = ("lm_loss", "grad_norm", "learning_rate")
    assert [[s[k] for k in keys] for s in steps["in samples"]] == [[s[k] for k in keys] for s in tiny_single_process]


@pytest.mark.parametrize("name", ["report determinism stats", "rerun disabled"])
def test_rerun_modes_do_not_change_training(runs, tiny_single_process, name):
    """The session's single-process run uses the default, validate_results; re-running every step in
    place (report) or never validating (disabled) trains bit for bit the same."""
    _, steps = runs
    assert [(s["lm_loss"], s["grad_norm"]) for s in steps[name]] == \
           [(s["lm_loss"], s["grad_norm"]) for s in tiny_single_process]


def test_a_rerun_in_place_draws_the_same_dropout_masks(runs):
    """With dropout the re-run only reproduces the loss if every random stream is set back; and
    training after it is bitwise the run without re-runs, so the streams end where they would."""
    out, steps = runs
    assert [(s["lm_loss"], s["grad_norm"]) for s in steps["dropout, report determinism stats"]] == \
           [(s["lm_loss"], s["grad_norm"]) for s in steps["dropout"]]
    reports = [line for line in batched_log(out, "dropout, report determinism stats").splitlines() if "max " in line]
    assert len(reports) == 4 and all("max 0.000e+00" in line for line in reports)


def test_report_determinism_stats_reports_a_zero_difference_on_this_deterministic_run(runs):
    out, _ = runs
    reports = [line for line in batched_log(out, "report determinism stats").splitlines() if "determinism stats" in line]
    assert len(reports) == 10
    assert all("max 0.000e+00" in line for line in reports)


@pytest.mark.parametrize("injection, exit_code, finding", [
    ("persistent_error", EXIT_CODE_RESUME_TO_DISAMBIGUATE, "is reproducible within the tolerance"),
    ("correct_result", EXIT_CODE_RESUME_TO_DISAMBIGUATE, "is reproducible within the tolerance"),
    ("transient_error", EXIT_CODE_FAILED_ON_RESULT_VALIDATION, "is not reproducible within the tolerance"),
])
def test_a_rejected_loss_is_rerun_and_stops_with_megatrons_exit_code(injection, exit_code, finding, capsys):
    """One process, in this process (a 1-rank group in memory): the injection rejects iteration 2's
    loss (the first is never validated, as in Megatron)."""
    code = train_main(TINY_MODEL + ["--train-iters", "4", "--error-injection-rate", "1",
                                    "--error-injection-type", injection])
    captured = capsys.readouterr()
    assert code == exit_code
    assert "iteration 2: unexpected result" in captured.err and finding in captured.err
    assert "iteration        2/" not in captured.out  # the step stopped before its optimizer step


def test_a_real_non_finite_loss_is_caught_and_found_reproducible(capsys):
    """No injection: an absurd LR without clipping makes iteration 3's loss NaN (the warmup's first
    step has LR 0, the second blows the weights up); the re-run
    (same state, deterministic CPU) gives it again, so Megatron's verdict is 'reproducible', code 16."""
    code = train_main(TINY_MODEL + ["--train-iters", "4", "--lr", "1e30", "--min-lr", "0", "--clip-grad", "0"])
    captured = capsys.readouterr()
    assert code == EXIT_CODE_RESUME_TO_DISAMBIGUATE, captured.err[-2000:]
    assert "iteration 3: unexpected result nan" in captured.err and "injected" not in captured.err
    assert "is reproducible within the tolerance" in captured.err


def test_a_rejected_loss_stops_every_pipeline_rank():
    """PP2: the loss exists on the last stage only; the verdict is shared, so both ranks stop with 17."""
    result = run_train(2, TINY_MODEL + ["--train-iters", "4", "--error-injection-rate", "1"] + layout_flags(1, 2),
                       check=False, monitor_interval=5)
    assert result.returncode != 0
    assert result.stderr.count("Possible transient error!") == 2, result.stderr[-3000:]
    assert "exitcode  : 17" in result.stderr or "exitcode: 17" in result.stderr, result.stderr[-3000:]
