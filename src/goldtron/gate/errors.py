"""The one error type the gate raises for bad input (exit code 2).

Every message names the file (or flag), the field and what to do about it, so a person can
fix a case without reading the gate's code.
"""

from __future__ import annotations


class GateInputError(Exception):
    """A case, golden file, flag or run log that the gate cannot use as given."""
