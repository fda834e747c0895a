"""Issue 3, "What must be shown" 6: the LR schedule on resume follows Megatron's two flags; and
--finetune loads the weights only.

Run 1 (--lr 1e-3) saves at N/2; each resume asks for --lr 2e-3:
- neither flag: the difference is an error that names --lr and both flags;
- --override-opt_param-scheduler: the flags' schedule from the checkpoint's position on;
- --use-checkpoint-opt_param-scheduler: the checkpoint's schedule, so the resume is run 1 exactly.
"""

import pytest

from checkpoint.ckpt_runs import after, tiny_under
from checkpoint.shared_saves import saved as save_folder, saving_run
from goldtron.training.lr_schedule import LRSchedule
from support.torchrun import NO_DROPOUT, TINY_MODEL, run_train

N, HALF, GLOBAL_BATCH, WARMUP_ITERS = 6, 3, 8, 2  # TINY_MODEL's batch and warmup
NEW_LR = ["--lr", "2e-3"]


def _resume(flags: list[str]) -> tuple[int, list[str]]:
    return tiny_under("TP1PP1", NO_DROPOUT + ["--train-iters", str(N), "--load", save_folder("base")] + flags)


# checkpoint/shared_saves.py: run 1 in the session's saving launches, the resumes after the rewind.
SHARED_SAVES = {"base": saving_run("TP1PP1", NO_DROPOUT, N, HALF, "base")}
SHARED_LOADS = {
    "override": _resume(NEW_LR + ["--override-opt_param-scheduler"]),
    "use checkpoint": _resume(NEW_LR + ["--use-checkpoint-opt_param-scheduler"]),
    "finetune": _resume(["--finetune"]),
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


@pytest.fixture(scope="module")
def saved(runs):
    """Run 1's save, rewound to N/2: (save dir, run 1's metrics)."""
    return runs[0]["base"].folder, runs[0]["base"].steps


def test_changed_schedule_without_a_flag_is_an_error(saved):
    save, _ = saved
    result = run_train(1, TINY_MODEL + NO_DROPOUT + ["--train-iters", str(N), "--load", str(save)] + NEW_LR,
                       check=False)
    assert result.returncode != 0
    for text in ("max_lr=0.001", "--lr gives 0.002", "--use-checkpoint-opt_param-scheduler",
                 "--override-opt_param-scheduler"):
        assert text in result.stderr, text


def test_override_takes_the_flags_schedule_from_the_saved_position(saved, runs):
    _, first = saved
    steps, _ = runs[1]["override"]
    assert [s["iteration"] for s in steps] == list(range(HALF + 1, N + 1))
    expected = LRSchedule(2e-3, 1e-4, WARMUP_ITERS * GLOBAL_BATCH, N * GLOBAL_BATCH, "cosine")
    for step in steps:
        expected.num_samples = step["iteration"] * GLOBAL_BATCH  # logged after the step's increment
        assert step["learning_rate"] == expected.lr()
    # Both schedules end at --min-lr; before that the new --lr shows.
    assert steps[0]["learning_rate"] != after(first, HALF)[0]["learning_rate"]


def test_use_checkpoint_keeps_the_saved_schedule(saved, runs):
    _, first = saved
    steps, _ = runs[1]["use checkpoint"]
    for step, ref in zip(steps, after(first, HALF), strict=True):
        assert (step["learning_rate"], step["lm_loss"]) == (ref["learning_rate"], ref["lm_loss"])


def test_finetune_loads_weights_only(saved, runs):
    """Iteration, data position, schedule and Adam start fresh; the weights are the checkpoint's,
    so the first step's loss is not the from-scratch one."""
    _, first = saved
    steps, log = runs[1]["finetune"]
    assert "at iteration 0 (model)" in log
    assert [s["iteration"] for s in steps] == list(range(1, N + 1))
    assert [s["learning_rate"] for s in steps] == [s["learning_rate"] for s in first]
    assert steps[0]["lm_loss"] != first[0]["lm_loss"]
