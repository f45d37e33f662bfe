"""Checks made before big work starts: free memory and free disk against an estimate of what
the work needs, so that it fails at once with one line saying the bytes needed and available
instead of running for minutes and failing part-way."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import KDMError

DISK_MARGIN = 16 << 20  # bytes kept free on a disk besides 5% of the estimate


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


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` made absolute, or its nearest ancestor that exists (where it will be made)."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def free_disk(path: str | os.PathLike) -> tuple[int, Path]:
    """Free bytes on the file system that ``path`` (or, where it does not exist yet, its
    nearest existing ancestor) is on, and that directory."""
    where = nearest_existing(path)
    return shutil.disk_usage(where).free, where


def size(n: int) -> str:
    """A byte count for messages: ``2.4 GB (2400000128 bytes)``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def check_memory(need: int, what: str, advice: str) -> None:
    """Refuse work (``what``) that needs ``need`` bytes of memory when less is available."""
    have = available_memory()
    if need > have:
        raise KDMError(f"{what} needs {size(need)} of memory, {size(have)} available; {advice}")


def check_disk(path: str | os.PathLike, need: int, what: str, advice: str) -> None:
    """Refuse to write ``need`` bytes at ``path`` (``what``) unless its file system has them
    free, with a margin of 5% and :data:`DISK_MARGIN`."""
    have, where = free_disk(path)
    if need + need // 20 + DISK_MARGIN > have:
        raise KDMError(f"{what} needs {size(need)} on disk, {size(have)} free in {where}; "
                       f"{advice}")
