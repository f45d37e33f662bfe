"""Atomic writes: write a file (or fill a directory) under a temporary name beside it, then
rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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
        chmod_default(tmp)  # mkstemp creates 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e, "nothing was changed") from None
        raise


def atomic_directory(path: str | os.PathLike, fill: Callable[[Path], None],
                     replace: bool = False) -> None:
    """Call ``fill(tmp_dir)`` on a new directory beside ``path`` and rename it onto ``path``
    (an existing ``path`` is replaced only when ``replace``); on any failure or interrupt
    nothing changes: no temporary directory, no new parent directory, the old ``path`` kept."""
    path = Path(path)
    made = [d for d in [path.parent, *path.parent.parents] if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise write_failed(path, e, "nothing was changed") from None
    old = tmp.with_name(tmp.name[:-4] + ".old")
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        if path.exists() and replace:
            os.replace(path, old)
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            os.replace(old, path)
        for d in made:  # deepest first; only what this call made, and only if empty
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(e, OSError):
            raise write_failed(path, e, "nothing was changed") from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def chmod_default(path: str | os.PathLike) -> None:
    """Give a file the mode a plain ``open`` would: 0666 less the umask."""
    os.chmod(path, 0o666 & ~_UMASK)


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
    """Read JSON, turning a missing, unreadable or malformed file (including one nested too
    deeply to parse) into a one-line KDMError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise KDMError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise KDMError(f"{what} {path} is a directory, not a file") from None
    except OSError as e:
        raise KDMError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KDMError(f"{what} {path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                       "it may be truncated or corrupt") from None
    except (RecursionError, ValueError) as e:  # nesting too deep, integers too long
        raise KDMError(f"{what} {path} is not a file koopman-distill wrote "
                       f"({type(e).__name__}: {first_line(e)}); it may be corrupt") from None
