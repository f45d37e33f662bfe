"""One exception type for every user-facing failure.

The CLI turns a :class:`KDMError` into a single ``kdm: error: ...`` line and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class KDMError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty),
    for quoting a library's error inside a one-line KDMError."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
