"""Precomputed reference statistics for the Fréchet distance: the feature mean ``mu`` (d,) and
covariance ``sigma`` (d, d) in an ``.npz``, the layout EDM's ``fid.py ref`` (``np.savez``,
float64) and pytorch-fid's ``--save-stats`` (``np.savez_compressed``) write and read."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KDMError, first_line
from ..io import atomic_write, sha256_file


def read_stats(path: str | os.PathLike, dim: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``mu`` (dim,) and ``sigma`` (dim, dim) as float64 from the ``.npz`` at ``path``, and
    what to record of the file (path, sha256, dim); a one-line KDMError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise KDMError(f"eval.reference_stats file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise KDMError(f"{path} is a single array, not an .npz with mu and sigma")
            keys = sorted(z.files)
            if not {"mu", "sigma"} <= set(keys):
                raise KDMError(f"{path} holds {', '.join(keys) or 'no arrays'}; reference "
                               "statistics need mu and sigma (as EDM's fid.py and pytorch-fid "
                               "write them)")
            mu, sigma = z["mu"], z["sigma"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise KDMError(f"cannot read {path} as an .npz: {first_line(e)}") from None
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise KDMError(f"{path}: mu and sigma must be float arrays, got {mu.dtype} and "
                       f"{sigma.dtype}")
    if mu.shape != (mu.size,) or sigma.shape != (mu.size, mu.size):
        raise KDMError(f"{path}: mu {mu.shape} and sigma {sigma.shape} must be (d,) and (d, d)")
    if mu.size != dim:
        raise KDMError(f"{path} holds {mu.size}-dimensional statistics but the extractor gives "
                       f"{dim}-dimensional features; use statistics of the same extractor "
                       "(eval.extractor)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise KDMError(f"{path}: mu or sigma holds NaN/inf values")
    info = {"stats": str(path.resolve()), "sha256": sha256_file(path), "dim": dim}
    return mu.astype(np.float64), sigma.astype(np.float64), info


def write_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """``mu`` and ``sigma`` as float64 into the ``.npz`` at ``path`` (``np.savez``, EDM's
    layout), atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))

    atomic_write(path, write)
