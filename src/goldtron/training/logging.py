"""What a step reports: Megatron's stdout line and Megatron's TensorBoard tags (last rank only)."""

from __future__ import annotations

import datetime
import struct
import sys

from goldtron.trainer_contract import ITERATION_FIELD, LOSS_FIELD


def as_float32(value: float) -> float:
    """`value` rounded to fp32: what TensorBoard records of it (its scalars are fp32) and what
    Megatron prints (its reduced loss is an fp32 tensor). The loss is reduced in fp64 here; printing
    that at 6 decimals could differ from the recorded value in the last digit."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond fp32's range: fp32 holds it as an infinity
        return float("inf") if value > 0 else float("-inf")


def megatron_log_line(iteration: int, train_iters: int, values: dict) -> str:
    """One line in Megatron's format (tools that parse Megatron logs parse this too)."""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [f" [{now}] {ITERATION_FIELD.format(iteration=iteration, train_iters=train_iters)} |",
             f" consumed samples: {values['consumed_samples']:12d} |",
             f" elapsed time per iteration (ms): {values['iteration_time'] * 1000.0:.1f} |",
             f" learning rate: {values['learning_rate']:.6E} |",
             f" global batch size: {values['batch_size']:5d} |",
             f" {LOSS_FIELD.format(lm_loss=as_float32(values['lm_loss']))} |",
             " loss scale: 1.0 |",
             f" grad norm: {values['grad_norm']:.3f} |"]
    if values.get("num_zeros") is not None:
        parts.append(f" num zeros: {float(values['num_zeros']):.1f} |")
    if values.get("params_norm") is not None:
        parts.append(f" params norm: {values['params_norm']:.3f} |")
    parts.append(" number of skipped iterations:   0 |")
    parts.append(" number of nan iterations:   0 |")
    return "".join(parts)


class TensorBoardLog:
    """A SummaryWriter on the logging rank; a no-op everywhere else or without --tensorboard-dir."""

    def __init__(self, directory: str | None, enabled: bool):
        self.writer = None
        if directory and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=directory, max_queue=1000)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def print_rank(line: str, enabled: bool) -> None:
    if enabled:
        print(line, flush=True)
        sys.stdout.flush()
