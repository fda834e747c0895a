"""goldtron's trainer with one deliberate bug, for the gate's mutation checks.

    python mutant_trainer.py MUTANT[,MUTANT...] train [flags...]

A gate that passes a broken trainer is worthless: each mutant must make its check fail, naming
the metric and the step. The flagship case's mutants are the bugs that case exists to catch; the
layout mutants (the last two) are what layout equivalence exists to catch.
"""

import sys

from goldtron.cli import main


def drain_one_short() -> None:
    """The deferred LM-head weight-gradients are drained one micro-batch short."""
    from goldtron.model.output_layer import OutputLayer

    drain = OutputLayer.drain_deferred_wgrads

    def short(self):
        if self.deferred is not None and self.deferred.pending:
            self.deferred.pending.pop()
        drain(self)

    OutputLayer.drain_deferred_wgrads = short


def skip_rng_restore() -> None:
    """Resuming from a checkpoint leaves the dropout RNG streams where a fresh start has them."""
    from goldtron.checkpoint import rng_state

    rng_state.restore = lambda saved, rng: None


def three_times_as_slow_late() -> None:
    """From iteration 34 on, every step of a run started from scratch takes three times as long:
    after its forward/backward the rank waits twice as long again (a slowdown that sets in after
    warm-up: a growing buffer, a leak). The gate's steady window of run 1 must catch it: its median
    (steps 30-40 of the flagship's 40) is a slow step once more than half of them are (7 of 11:
    one to spare), and the steps before cost no extra (each slow step costs two more; issue 12).
    A resumed run (run 2) is not slowed: the leak starts over with the process; run 2 at a third
    of run 1's step time is inside the case's 100% time band (|a - r| <= r for any a <= 2r), so
    slowing it too would only cost the suite time.
    Three times, not two: the same CPU kind runs the flagship 25-30% faster on one day than on
    another (measured: 1.27-1.58 s a step against the golden's 1.85 s, while the calibration moved
    only 9%), so a 2x slowdown can land inside the 50% band on a fast day."""
    import time

    from goldtron.parallel.schedule import Schedule
    from goldtron.training.loop import Trainer

    first_slow_iteration = 34
    step_is_slow = {"now": False}
    trainer_step, schedule_step = Trainer.train_step, Schedule.train_step

    def numbered(self):
        started_at = step_is_slow.setdefault("started at", self.iteration)
        step_is_slow["now"] = started_at == 0 and self.iteration + 1 >= first_slow_iteration
        return trainer_step(self)

    def slow(self, micro_batches):
        started = time.perf_counter()
        loss = schedule_step(self, micro_batches)
        if step_is_slow["now"]:
            time.sleep(2 * (time.perf_counter() - started))
        return loss

    Trainer.train_step, Schedule.train_step = numbered, slow


def skip_tp_backward_all_reduce() -> None:
    """The all-reduce over the TP group of a column-parallel layer's input gradient is skipped
    in backward: each TP rank passes on only its own share of the gradient."""
    from goldtron.parallel import collectives

    collectives._CopyToTensorParallel.backward = staticmethod(lambda ctx, grad: (grad, None, None))


def send_previous_activations() -> None:
    """A pipeline stage sends the next stage the previous micro-batch's activations (the first
    micro-batch of a step sends its own)."""
    from goldtron.parallel.p2p import PipelineP2P

    exchange = PipelineP2P.exchange
    previous = {}

    def stale(self, *args, send_next=None, **kwargs):
        if send_next is not None:
            current = send_next.detach().clone()
            send_next = previous.get("sent", current)
            previous["sent"] = current
        return exchange(self, *args, send_next=send_next, **kwargs)

    PipelineP2P.exchange = stale


def corrupt_qk_norm_on_tp_rank_1() -> None:
    """After iteration 2, tensor-parallel rank 1's first query layer-norm weight moves by 1e-3
    (silent memory corruption on one rank): --test-mode must stop every rank at iteration 3."""
    import torch

    from goldtron.training.loop import Trainer

    trainer_step = Trainer.train_step

    def corrupting(self):
        record = trainer_step(self)
        if self.iteration == 2 and self.ps.tp_rank == 1:
            weight = next(p for name, p in self.model.named_parameters() if ".q_layernorm." in name)
            with torch.no_grad():
                weight.add_(1e-3)
        return record

    Trainer.train_step = corrupting


MUTANTS = {"drain-one-short": drain_one_short, "skip-rng-restore": skip_rng_restore,
           "three-times-as-slow-late": three_times_as_slow_late,
           "skip-tp-backward-all-reduce": skip_tp_backward_all_reduce,
           "send-previous-activations": send_previous_activations,
           "corrupt-qk-norm-on-tp-rank-1": corrupt_qk_norm_on_tp_rank_1}

if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        MUTANTS[name]()
    sys.exit(main(sys.argv[2:]))
