"""The one exception type for checkpoints that cannot be read or written as asked."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint problem a person must fix: the message names the file or flag and the fix.

    Raised the same way on every rank (every rank checks the same files), so a bad checkpoint
    ends the run everywhere instead of leaving ranks waiting in a collective.
    """
