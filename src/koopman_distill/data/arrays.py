"""User-provided arrays: validated loading of ``.npy`` point clouds, noise and label files,
and the memory and disk checks made before an array is built or written."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..errors import KDMError, first_line


def available_memory() -> int:
    """Bytes that new allocations can use: ``MemAvailable`` of /proc/meminfo where there is
    one, else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk(path: str | Path) -> tuple[int, Path]:
    """Free bytes on the file system that ``path`` (or, where it does not exist yet, its
    nearest existing ancestor) is on, and that directory."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free, where


def size(n: int) -> str:
    """A byte count for messages: ``2.4 GB (2400000128 bytes)``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def check_memory(need: int, what: str, advice: str) -> None:
    """Refuse work that needs ``need`` bytes of memory when less is available."""
    have = available_memory()
    if need > have:
        raise KDMError(f"{what} needs {size(need)} of memory, {size(have)} available; {advice}")


def check_disk(path: str | Path, need: int, what: str, advice: str) -> None:
    """Refuse to write ``need`` bytes at ``path`` when its file system has less free."""
    have, where = free_disk(path)
    if need > have:
        raise KDMError(f"{what} needs {size(need)} on disk, {size(have)} free in {where}; "
                       f"{advice}")


def load_array(path: str | Path, shape: tuple[int, ...] | None = None,
               what: str = "array") -> np.ndarray:
    """Load a ``.npy`` array of shape (N, *shape) as float32, or, with ``shape`` None, class
    ids of shape (N,) as int64; reject anything else.

    Errors (one line each): missing file, not a NumPy ``.npy`` file, object arrays, wrong
    shape, non-numeric dtype, no rows, more than the available memory, NaN/inf (with their
    count and first row indices), non-integer or negative class ids.
    """
    path = Path(path)
    want = "(N,)" if shape is None else f"(N, {', '.join(map(str, shape))})"
    if not path.is_file():
        raise KDMError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise KDMError(f"{path} is not a plain .npy array ({first_line(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise KDMError(f"cannot read {path} as .npy: {first_line(e)}") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise KDMError(f"{path} is an .npz archive; give a single .npy array of shape {want}")
    if arr.shape[1:] != (shape or ()) or arr.ndim < 1:
        raise KDMError(f"{what} {path} must have shape {want}, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise KDMError(f"{what} {path} must hold numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise KDMError(f"{what} {path} is empty")
    check_memory(arr.size * (8 if shape is None else 5), f"loading {what} {path} {arr.shape}",
                 "use a smaller file")
    if shape is None:
        if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
            raise KDMError(f"{what} {path} must hold non-negative integer class ids, got "
                           f"{arr.dtype} values from {arr.min()} to {arr.max()}")
        return np.array(arr, dtype=np.int64)
    out = np.array(arr, dtype=np.float32)  # a writable in-memory copy of the memory map
    bad = np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))
    if bad.size:
        first = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise KDMError(f"{what} {path} has {bad.size} rows with NaN/inf (rows {first}); "
                       "remove or fix them")
    return out


def load_points(path: str | Path, dim: int = 2, what: str = "point cloud") -> np.ndarray:
    """Load a ``.npy`` array of shape (N, dim) as float32 (see :func:`load_array`)."""
    return load_array(path, (dim,), what)
