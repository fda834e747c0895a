"""--rerun-mode: Megatron's re-run state machine for validating results, the part a CPU can honour.

Megatron validates each step's loss (NaN, Inf) and, on a rejected one, re-runs the step in place
from the same state: a result that does not come back is a transient fault (the job stops with
exit code 17); one that does is either a persistent fault of this device or a correct result,
which Megatron tells apart by checkpointing, exiting with code 16 and re-running the step on
another GPU. goldtron does the in-place re-run and both exits; the re-run on another device is
left to the person (there is no second device to move to here, and no diagnostic checkpoint is
written: --save's last periodic checkpoint is the place to resume from). The first step a process
runs (also after a resume) is not validated, as in Megatron.

report_determinism_stats re-runs every step once from the same state (RNG streams restored,
gradients recomputed) and reports how far the two losses differ (0 on a deterministic CPU run);
training continues with the re-run's gradients, as Megatron's does.

--error-injection-rate N rejects one validated loss in N at random (a generator of its own, the
same on every rank) and --error-injection-type says what the re-run then finds, as Megatron's
RerunErrorInjector: transient_error does not reproduce; persistent_error and correct_result do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.distributed as dist

from goldtron.parallel.collectives import all_reduce_

# Megatron's exit codes (megatron/core/rerun_state_machine.py).
EXIT_CODE_RESUME_TO_DISAMBIGUATE = 16
EXIT_CODE_FAILED_ON_RESULT_VALIDATION = 17


class ResultValidationStop(Exception):
    """Stop the run with Megatron's exit code; the message says what the re-run found."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _relative_difference(first: float, second: float) -> float:
    if first == second or (math.isnan(first) and math.isnan(second)):
        return 0.0
    return abs(first - second) / max(abs(first), abs(second), 1e-30)


class ResultValidator:
    def __init__(self, mode: str, ps, injection_rate: int = 0, injection_type: str = "transient_error",
                 seed: int = 0):
        self.mode = mode
        self.ps = ps
        self.injection_rate = injection_rate
        self.injection_type = injection_type
        self._injection_draws = random.Random(seed)
        self.differences: list[float] = []  # report_determinism_stats: one per step since the last report
        self.first_step_done = False  # Megatron's first_iteration_complete: this process's first step

    @classmethod
    def from_args(cls, args, ps) -> "ResultValidator":
        return cls(args.rerun_mode, ps, args.error_injection_rate, args.error_injection_type, args.seed)

    def _any_rank(self, flag: bool) -> bool:
        value = torch.tensor([int(flag)], dtype=torch.int64, device=self.ps.device)
        if self.ps.world_size > 1:
            all_reduce_(value, dist.group.WORLD, self.ps.backend_release)
        return bool(value.item())

    def _rejected(self, loss: float) -> tuple[bool, bool]:
        """(rejected on any rank, injected): the loss is only known on the last stage."""
        injected = bool(self.injection_rate) and self._injection_draws.randint(1, self.injection_rate) == 1
        bad = self.ps.is_last_stage and not math.isfinite(loss)
        return self._any_rank(bad) or injected, injected

    def run_step(self, forward_backward: Callable[[], float], save_state: Callable[[], object],
                 restore_state: Callable[[object], None], iteration: int) -> float:
        """Run the step's forward-backward under the mode. `forward_backward` zeroes the gradients,
        runs the schedule and returns this rank's step loss (meaningful on the last stage);
        `save_state`/`restore_state` capture and restore every random stream the step draws from."""
        if self.mode == "disabled":
            return forward_backward()
        state = save_state()
        loss = forward_backward()
        if self.mode == "report_determinism_stats":
            restore_state(state)
            again = forward_backward()
            self.differences.append(_relative_difference(loss, again) if self.ps.is_last_stage else 0.0)
            return loss
        if not self.first_step_done:  # Megatron validates from this process's second step on
            self.first_step_done = True
            return loss
        rejected, injected = self._rejected(loss)
        if not rejected:
            return loss
        restore_state(state)
        again = forward_backward()
        reproduced = _relative_difference(loss, again) == 0.0 or (not math.isfinite(loss) and not math.isfinite(again))
        if injected:
            reproduced = self.injection_type != "transient_error"
        reproduced = not self._any_rank(not reproduced)
        what = f"iteration {iteration}: unexpected result {loss} (message='loss is NaN or Inf'{', injected' if injected else ''})"
        if not reproduced:
            raise ResultValidationStop(
                f"--rerun-mode validate_results, {what}. First rerun: unexpected result is not reproducible within "
                f"the tolerance ({again} != {loss}). Possible transient error! Exiting with code "
                f"{EXIT_CODE_FAILED_ON_RESULT_VALIDATION}.", EXIT_CODE_FAILED_ON_RESULT_VALIDATION)
        raise ResultValidationStop(
            f"--rerun-mode validate_results, {what}. First rerun: unexpected result is reproducible within the "
            f"tolerance ({again} = {loss}). Megatron would now save a checkpoint and exit with code "
            f"{EXIT_CODE_RESUME_TO_DISAMBIGUATE} to re-run the step on a different GPU; goldtron exits with that "
            "code without the diagnostic checkpoint: resume from --save's last checkpoint on another device to tell "
            "a persistent fault from a correct result.", EXIT_CODE_RESUME_TO_DISAMBIGUATE)

    def report(self) -> str | None:
        """report_determinism_stats: the loss differences since the last report, or None."""
        if self.mode != "report_determinism_stats" or not self.differences:
            return None
        d = self.differences
        self.differences = []
        return (f"determinism stats (re-run in place): lm loss relative difference over {len(d)} step(s): "
                f"max {max(d):.3e}, mean {sum(d) / len(d):.3e}")
