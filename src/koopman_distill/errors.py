"""One exception type for every user-facing failure, and one-line warnings.

The CLI turns a :class:`KDMError` into a single ``kdm: error: ...`` line and exit code 2, and
a :class:`Stopped` (a run that checkpointed and stopped on a signal) into one line and exit
code ``128 + signal``.
"""

import sys


class KDMError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty),
    for quoting a library's error inside a one-line KDMError."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


_warned: set[str] = set()


def warn(message: str) -> None:
    """Print one ``kdm: warning: ...`` line to stderr (each message once per process)."""
    line = f"kdm: warning: {' '.join(message.splitlines())}"
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)
