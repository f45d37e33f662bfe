"""User-provided arrays: validated loading of ``.npy`` point clouds and noise files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import KDMError


def load_points(path: str | Path, dim: int = 2, what: str = "point cloud") -> np.ndarray:
    """Load a ``.npy`` array of shape (N, dim) as float32, rejecting anything else.

    Errors (one line each): missing file, not a NumPy ``.npy`` file, object arrays, wrong
    shape, non-numeric dtype, no rows, NaN/inf (with their count and first row indices).
    """
    path = Path(path)
    if not path.is_file():
        raise KDMError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise KDMError(f"{path} is not a plain .npy array ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError) as e:
        raise KDMError(f"cannot read {path} as .npy: {str(e).splitlines()[0] or 'truncated'}"
                       ) from None
    if not isinstance(arr, np.ndarray):
        raise KDMError(f"{path} is an .npz archive; give a single .npy array of shape (N, {dim})")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise KDMError(f"{what} {path} must have shape (N, {dim}), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise KDMError(f"{what} {path} must hold numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise KDMError(f"{what} {path} is empty")
    out = np.array(arr, dtype=np.float32)  # a writable in-memory copy of the memory map
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        first = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise KDMError(f"{what} {path} has {bad.size} rows with NaN/inf (rows {first}); "
                       "remove or fix them")
    return out
