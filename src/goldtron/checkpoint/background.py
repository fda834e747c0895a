"""One checkpoint write running on a background thread (`--async-save`).

The caller snapshots the tensors first, so training may change the live ones meanwhile. The
write uses its own process group (see Checkpointer), so its collectives never interleave with
the training loop's. An error in the thread is kept and raised where the save is waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from goldtron.checkpoint.errors import CheckpointError


class BackgroundWrite:
    def __init__(self, work: Callable[[], None], description: str):
        self.description = description
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"goldtron-save-{description}",
                                        daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # kept for wait(): a thread cannot raise into the loop
            self._error = error
        finally:
            self.finished = time.perf_counter()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> float:
        """Block until the write is finished; returns the seconds spent waiting here."""
        start = time.perf_counter()
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, CheckpointError):
                raise self._error
            raise CheckpointError(f"background save of {self.description} failed: "
                                  f"{type(self._error).__name__}: {self._error}") from self._error
        return time.perf_counter() - start
