"""What the trainer writes and the gate reads, each defined once (both sides import it here).

- the exit code for input a person must fix (bad flags, data or checkpoint): the gate reports a
  configuration error instead of a crash;
- the stdout progress line's iteration and loss fields (Megatron's format: tools that parse
  Megatron logs parse goldtron's);
- the TensorBoard tags (Megatron's names: golden files use them as metric keys).

tests/gate/test_trainer_contract.py runs the trainer once and reads its output with the gate's
own readers.
"""

from __future__ import annotations

import re

EXIT_CONFIG_ERROR = 2

# The progress line's fields: written by training/logging.py, parsed by gate/progress.py.
ITERATION_FIELD = "iteration {iteration:8d}/{train_iters:8d}"
LOSS_FIELD = "lm loss: {lm_loss:.6E}"
ITERATION_PATTERN = re.compile(r"iteration\s+(\d+)/\s*(\d+)")
LOSS_PATTERN = re.compile(r"lm loss: (\S+)")

# TensorBoard tags: written by training/loop.py, read by the gate's checks and golden files.
LM_LOSS = "lm loss"
LEARNING_RATE = "learning-rate"
BATCH_SIZE = "batch-size"
GRAD_NORM = "grad-norm"
NUM_ZEROS = "num-zeros"
PARAMS_NORM = "params-norm"
ITERATION_TIME = "iteration-time"
MEM_ALLOCATED = "mem-allocated-bytes"
MEM_MAX_ALLOCATED = "mem-max-allocated-bytes"
LM_LOSS_VALIDATION = "lm loss validation"
LM_LOSS_VALIDATION_PPL = "lm loss validation ppl"


def pipeline_timer_tag(rank: int, kind: str) -> str:
    return f"pipeline-timers/rank{rank}/{kind}"
