"""User-provided arrays: validated loading of ``.npy`` point clouds, noise and label files."""

from __future__ import annotations

import tokenize
import zipfile
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import KDMError, first_line
from ..resources import check_memory


def load_array(path: str | Path, shape: tuple[int | None, ...] | None = None,
               what: str = "array") -> np.ndarray:
    """Load a ``.npy`` array of shape (N, *shape) as float32 (a None entry of ``shape`` takes
    any size), or, with ``shape`` None, class ids of shape (N,) as int64; reject anything else.

    Errors (one line each): missing file, not a NumPy ``.npy`` file, object arrays, wrong
    shape, non-numeric dtype, no rows, more than the available memory, NaN/inf (with their
    count and first row indices), non-integer or negative class ids.
    """
    path = Path(path)
    want = "(N,)" if shape is None else "(N, {})".format(
        ", ".join("D" if s is None else str(s) for s in shape))
    if not path.is_file():
        raise KDMError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise KDMError(f"{path} is not a plain .npy array ({first_line(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, SyntaxError, tokenize.TokenError) as e:
        # a damaged header: numpy parses it with tokenize/ast
        raise KDMError(f"cannot read {path} as .npy: {first_line(e)}") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise KDMError(f"{path} is an .npz archive; give a single .npy array of shape {want}")
    if arr.ndim != 1 + len(shape or ()) or 0 in arr.shape[1:] or any(
            w not in (None, s) for s, w in zip(arr.shape[1:], shape or (), strict=True)):
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


def load_points(path: str | Path, dim: int | None = None,
                what: str = "point cloud") -> np.ndarray:
    """Load a ``.npy`` array of shape (N, dim) as float32, any dimension D when ``dim`` is
    None (see :func:`load_array`)."""
    return load_array(path, (dim,), what)


def vector_data(cfg: Config) -> np.ndarray:
    """A vector teacher's training data (N, D): ``data.n`` points of the embedded checkerboard
    (seeded by ``data.seed``), or the user's ``.npy`` named by ``data.source``."""
    if cfg.data.source == "checkerboard":
        import torch

        from .checkerboard import sample_checkerboard

        return sample_checkerboard(cfg.data.n,
                                   torch.Generator().manual_seed(cfg.data.seed)).numpy()
    return load_points(cfg.data.source)
