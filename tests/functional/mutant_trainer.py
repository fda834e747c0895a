"""goldtron's trainer with one deliberate bug, for the flagship case's mutation checks.

    python mutant_trainer.py MUTANT[,MUTANT...] train [flags...]

A gate that passes a broken trainer is worthless: each mutant must make the flagship case fail,
naming the metric and the step. The bugs are the ones the case exists to catch.
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


def twice_as_slow() -> None:
    """Every step takes twice as long: after its forward/backward the rank waits as long again
    (what a sleep per step, or a slow path in the loss, does to iteration-time)."""
    import time

    from goldtron.parallel.schedule import Schedule

    train_step = Schedule.train_step

    def slow(self, micro_batches):
        started = time.perf_counter()
        loss = train_step(self, micro_batches)
        time.sleep(time.perf_counter() - started)
        return loss

    Schedule.train_step = slow


MUTANTS = {"drain-one-short": drain_one_short, "skip-rng-restore": skip_rng_restore, "twice-as-slow": twice_as_slow}

if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        MUTANTS[name]()
    sys.exit(main(sys.argv[2:]))
