"""The one error type for bad data input.

Every message names the file or the flag that is wrong and says how to fix it, so a user
never has to read a traceback to learn what went wrong.
"""


class DataError(ValueError):
    """Bad data input (a file, a flag, a cache); the message names it and the fix."""
