"""The gate-trainer contract (goldtron/trainer_contract.py) end to end: the real trainer runs once
(one process, the tiny model, three iterations) and the gate's own readers parse what it wrote:
the stdout progress line (gate/progress.py), the TensorBoard tags (gate/tensorboard_reader.py,
the metrics its checks and golden files use), and the exit code for a bad flag (gate/launcher.py).
"""

from goldtron.gate import launcher
from goldtron.gate.checks import DEFAULT_CHECKS
from goldtron.gate.golden import RECORDED_METRICS
from goldtron.gate.progress import parse_progress
from goldtron.gate.tensorboard_reader import read_scalars
from goldtron.trainer_contract import EXIT_CONFIG_ERROR, LM_LOSS
from support.torchrun import TINY_MODEL, run_train

ITERS = 3


def test_the_gate_reads_the_trainers_progress_line_and_tags(tmp_path):
    tb = tmp_path / "tb"
    result = run_train(1, TINY_MODEL + ["--train-iters", str(ITERS), "--log-memory-to-tensorboard",
                                        "--log-timers-to-tensorboard", "--tensorboard-dir", str(tb)])
    progress = [p for p in map(parse_progress, result.stdout.splitlines()) if p is not None]
    assert [(p.iteration, p.total) for p in progress] == [(k, ITERS) for k in range(1, ITERS + 1)]
    assert all(float(p.loss) > 0 for p in progress)

    scalars = read_scalars(tb)
    for metric in (*RECORDED_METRICS, *DEFAULT_CHECKS):
        assert metric in scalars, f"the trainer wrote no {metric!r}; it wrote {sorted(scalars)}"
    assert sorted(scalars[LM_LOSS]) == list(range(1, ITERS + 1))
    assert {step: f"{value:.6E}" for step, value in scalars[LM_LOSS].items()} == \
        {p.iteration: f"{float(p.loss):.6E}" for p in progress}


def test_the_gate_reads_the_trainers_configuration_error(tmp_path):
    result = run_train(1, TINY_MODEL + ["--train-iters", "0"], check=False)
    log = tmp_path / "phase.log"
    log.write_text(result.stdout + result.stderr)
    outcome = launcher.PhaseOutcome("contract", [], result.returncode, 0.0, log, tmp_path / "rank_logs")
    launcher._explain_failure(outcome)
    assert outcome.rank_exit_code == EXIT_CONFIG_ERROR and outcome.config_error
