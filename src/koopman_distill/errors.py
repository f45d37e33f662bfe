"""One exception type for every user-facing failure.

The CLI turns a :class:`KDMError` into a single ``kdm: error: ...`` line and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class KDMError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""
