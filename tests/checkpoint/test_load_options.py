"""Issue 3, "What must be shown" 6: the LR schedule on resume follows Megatron's two flags; and
--finetune loads the weights only.

Run 1 (--lr 1e-3) saves at N/2; each resume asks for --lr 2e-3:
- neither flag: the difference is an error that names --lr and both flags;
- --override-opt_param-scheduler: the flags' schedule from the checkpoint's position on;
- --use-checkpoint-opt_param-scheduler: the checkpoint's schedule, so the resume is run 1 exactly.
"""

import pytest

from checkpoint.ckpt_runs import after, layout_run, rewind
from goldtron.training.lr_schedule import LRSchedule
from support.torchrun import NO_DROPOUT, TINY_MODEL, run_train

N, HALF, GLOBAL_BATCH, WARMUP_ITERS = 6, 3, 8, 2  # TINY_MODEL's batch and warmup
NEW_LR = ["--lr", "2e-3"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    save = tmp / "ckpt"
    steps, _ = layout_run(tmp, "base", "TP1PP1", NO_DROPOUT + ["--train-iters", str(N), "--save", str(save),
                                                                "--save-interval", str(HALF)])
    rewind(save, HALF)
    return save, steps


def _resume(tmp_path, save, flags):
    return layout_run(tmp_path, "resume", "TP1PP1", NO_DROPOUT + ["--train-iters", str(N), "--load", str(save)] + flags)[0]


def test_changed_schedule_without_a_flag_is_an_error(saved):
    save, _ = saved
    result = run_train(1, TINY_MODEL + NO_DROPOUT + ["--train-iters", str(N), "--load", str(save)] + NEW_LR,
                       check=False)
    assert result.returncode != 0
    for text in ("max_lr=0.001", "--lr gives 0.002", "--use-checkpoint-opt_param-scheduler",
                 "--override-opt_param-scheduler"):
        assert text in result.stderr, text


def test_override_takes_the_flags_schedule_from_the_saved_position(saved, tmp_path):
    save, first = saved
    steps = _resume(tmp_path, save, NEW_LR + ["--override-opt_param-scheduler"])
    assert [s["iteration"] for s in steps] == list(range(HALF + 1, N + 1))
    expected = LRSchedule(2e-3, 1e-4, WARMUP_ITERS * GLOBAL_BATCH, N * GLOBAL_BATCH, "cosine")
    for step in steps:
        expected.num_samples = step["iteration"] * GLOBAL_BATCH  # logged after the step's increment
        assert step["learning_rate"] == expected.lr()
    # Both schedules end at --min-lr; before that the new --lr shows.
    assert steps[0]["learning_rate"] != after(first, HALF)[0]["learning_rate"]


def test_use_checkpoint_keeps_the_saved_schedule(saved, tmp_path):
    save, first = saved
    steps = _resume(tmp_path, save, NEW_LR + ["--use-checkpoint-opt_param-scheduler"])
    for step, ref in zip(steps, after(first, HALF), strict=True):
        assert (step["learning_rate"], step["lm_loss"]) == (ref["learning_rate"], ref["lm_loss"])


def test_finetune_loads_weights_only(saved, tmp_path):
    """Iteration, data position, schedule and Adam start fresh; the weights are the checkpoint's,
    so the first step's loss is not the from-scratch one."""
    save, first = saved
    steps, log = layout_run(tmp_path, "finetune", "TP1PP1", NO_DROPOUT + ["--train-iters", str(N), "--load",
                                                                          str(save), "--finetune"])
    assert "at iteration 0 (model)" in log
    assert [s["iteration"] for s in steps] == list(range(1, N + 1))
    assert [s["learning_rate"] for s in steps] == [s["learning_rate"] for s in first]
    assert steps[0]["lm_loss"] != first[0]["lm_loss"]
