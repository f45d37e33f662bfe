"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import KDMError, first_line

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_failed(path: str | os.PathLike, err: OSError, kept: str) -> KDMError:
    """A one-line error for a failed write (disk full, permissions) naming what was kept."""
    return KDMError(f"cannot write {path}: {err.strerror or err}; {kept}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; on failure nothing changes
    (an OSError such as a full disk becomes a one-line KDMError)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failed(path, e, "nothing was changed") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e, "nothing was changed") from None
        raise


def remove_temp_files(directory: str | os.PathLike, name: str) -> None:
    """Delete the temporary files a killed :func:`atomic_write` of ``directory/name`` left."""
    for tmp in Path(directory).glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line KDMError."""
    path = Path(path)
    if not path.is_file():
        raise KDMError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # also integers too long, nesting too deep
        reason = e.msg if isinstance(e, json.JSONDecodeError) else first_line(e)
        raise KDMError(f"{what} {path} is not valid JSON ({reason}); it may be truncated or "
                       "corrupt") from None
    except OSError as e:
        raise KDMError(f"cannot read {what} {path}: {e.strerror or e}") from None
