"""Layout equivalence (gate/equivalence.py): the single-process twin, and the judgement that
allows no diverging step and names the first one."""

from __future__ import annotations

from goldtron.gate.case import Case
from goldtron.gate.equivalence import (EQUIVALENCE_RTOL, judge_against_twin, single_process_twin,
                                       without_dropout)

from .conftest import series

LAYOUT = {"--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2, "--defer-embedding-wgrad-compute": True,
          "--wgrad-deferral-limit": 2, "--use-distributed-optimizer": True, "--num-virtual-stages-per-pipeline-rank": 2,
          "--save": "${CHECKPOINT_SAVE_PATH}", "--save-interval": 10, "--global-batch-size": 8,
          "--micro-batch-size": 2, "--calculate-per-token-loss": True, "--hidden-dropout": 0.1}


def test_twin_is_one_process_computing_the_same_steps(tmp_path):
    case = without_dropout(Case(path=tmp_path, test_type="ckpt-resume", model_args=dict(LAYOUT), env_vars={},
                                nproc_per_node=4))
    twin = single_process_twin(case)
    args = twin.model_args
    assert (args["--tensor-model-parallel-size"], args["--pipeline-model-parallel-size"]) == (1, 1)
    for dropped in ("--defer-embedding-wgrad-compute", "--use-distributed-optimizer", "--save",
                    "--num-virtual-stages-per-pipeline-rank"):
        assert dropped not in args
    # The same global batch, the same loss definition, no dropout in either run.
    assert (args["--global-batch-size"], args["--micro-batch-size"]) == (8, 2)
    assert args["--calculate-per-token-loss"] is True
    assert args["--hidden-dropout"] == case.model_args["--hidden-dropout"] == 0.0
    assert twin.nproc_per_node == 1 and twin.test_type == "regular"


def _values(loss: dict, norm: dict):
    return {"lm loss": series(loss), "grad-norm": series(norm)}


def test_equal_runs_pass_and_a_divergence_is_named_from_its_first_step():
    twin = _values({1: 10.0, 2: 9.0, 3: 8.0}, {1: 2.0, 2: 1.5, 3: 1.0})
    close = _values({1: 10.0 * (1 + EQUIVALENCE_RTOL / 10), 2: 9.0, 3: 8.0}, {1: 2.0, 2: 1.5, 3: 1.0})
    assert judge_against_twin(twin, close, "case").verdict.passed
    # One step out of tolerance fails (Megatron's approximate checks would allow it).
    broken = _values({1: 10.0, 2: 9.0, 3: 8.0}, {1: 2.0, 2: 1.5 * (1 + 10 * EQUIVALENCE_RTOL), 3: 1.0})
    verdict = judge_against_twin(twin, broken, "case").verdict
    assert not verdict.passed
    assert verdict.first_divergence() == ("grad-norm", 2)
