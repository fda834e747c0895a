"""Layout equivalence end to end: goldtron's own trainer at TP2 x PP2 on 4 gloo ranks passes
against its single-process twin, and two broken trainers fail it, naming the first step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from goldtron.gate import commands

pytestmark = pytest.mark.slow
MUTANT_TRAINER = Path(__file__).parents[1] / "support" / "mutant_trainer.py"
TINY_LAYOUT = {
    "--num-layers": 2, "--hidden-size": 64, "--num-attention-heads": 4, "--seq-length": 64,
    "--max-position-embeddings": 64, "--micro-batch-size": 1, "--global-batch-size": 4, "--train-iters": 4,
    "--lr": 1e-3, "--lr-warmup-iters": 1, "--log-interval": 1, "--eval-iters": 0, "--torch-threads": 1,
    "--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2, "--distributed-backend": "gloo",
    "--tensorboard-dir": "${TENSORBOARD_PATH}", "--hidden-dropout": 0.1,
}


def _case(root: Path, name: str, mutant: str | None) -> Path:
    goldtron = {"NPROC_PER_NODE": 4, "PHASE_TIMEOUT_S": 300, "EQUIVALENCE": True}
    if mutant:
        goldtron["TRAINER"] = [sys.executable, str(MUTANT_TRAINER), mutant, "train"]
    config = {"ENV_VARS": {"OMP_NUM_THREADS": 1}, "MODEL_ARGS": TINY_LAYOUT, "TEST_TYPE": "regular",
              "GOLDTRON": goldtron}
    (root / name).mkdir(parents=True)
    (root / name / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / name


def _judge(tmp_path: Path, mutant: str | None, capsys) -> tuple[int, str]:
    case = _case(tmp_path, mutant or "correct", mutant)
    # Forked like goldtron's own trainer (auto): the mutants wrap it. The fake-trainer tests keep torchrun's path.
    code = commands.test_main([str(case), "--output-dir", str(tmp_path / "out"), "--no-plot", "--size", "full",
                               "--launcher", "fork"])
    return code, capsys.readouterr().out


def test_correct_layout_equals_its_single_process_twin(tmp_path, capsys):
    code, printed = _judge(tmp_path, None, capsys)
    assert code == 0, printed
    assert "run 1 vs single process" in printed and "golden: none needed" in printed
    assert "--hidden-dropout" not in printed  # --size full: the case's own flags (dropout off by --equivalence)


@pytest.mark.parametrize("mutant", ["skip-tp-backward-all-reduce", "send-previous-activations"])
def test_broken_layout_fails_naming_the_first_step(tmp_path, mutant, capsys):
    code, printed = _judge(tmp_path, mutant, capsys)
    assert code == 1, printed
    # Both bugs change the first step's gradients (a skipped backward all-reduce leaves step 1's
    # loss as it is, its grad-norm not): the verdict names step 1.
    assert "run 1 vs single process: 'grad-norm' approximate fail first diverging at step 1" in printed, printed
