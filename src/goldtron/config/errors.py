"""The single exception type for bad configuration."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag or combination of flags that goldtron cannot run.

    The message names the flag(s) and says how to fix them. It is raised before any
    process group exists, on every rank alike, so a bad run exits instead of hanging.
    """
