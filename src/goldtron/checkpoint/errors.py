"""The one exception type for checkpoints that cannot be read or written as asked."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint problem a person must fix: the message names the file or flag and the fix.

    Raised the same way on every rank (every rank checks the same files), so a bad checkpoint
    ends the run everywhere instead of leaving ranks waiting in a collective.
    """


def dcp_cause(error: BaseException) -> BaseException:
    """What really failed inside a DCP save or load. DCP gathers each rank's exception into one
    `CheckpointException` (a BaseException, so `except Exception` misses it) raised on every rank;
    the first rank's own exception is what a message should show."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        wrapped = failures[min(failures)]
        if isinstance(wrapped, tuple) and wrapped and isinstance(wrapped[0], BaseException):
            return wrapped[0]
    return error


def dcp_read_error(error: BaseException, path: str) -> CheckpointError:
    """The CheckpointError for a failed `dcp.load` of `path` (a refused object keeps its own message,
    which names the file)."""
    cause = dcp_cause(error)
    if isinstance(cause, CheckpointError):
        return CheckpointError(str(cause))
    return CheckpointError(f"reading the checkpoint in {path} failed: {type(cause).__name__}: {cause}")
