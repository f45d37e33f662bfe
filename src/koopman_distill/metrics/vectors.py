"""Sample-quality metrics for vectors of any dimension D, in float64 on the CPU.

Every function takes numpy arrays or torch tensors of shape (N, D) and is deterministic given
its ``seed``. Bad input (wrong shape, empty, NaN/inf) raises a one-line :class:`KDMError`.
Dataset-specific metrics (the checkerboard's inside rate) live with their dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import KDMError

# Largest number of float64 elements one intermediate block may hold (32 MB).
_CHUNK_ELEMENTS = 4_000_000


def as_points(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validate ``x`` and return it as a float64 array of shape (N, D).

    Raises KDMError if ``x`` is not numeric, not 2-D, has ``D != dim`` (when given), is
    empty, or holds non-finite rows (the message gives their count and first row indices).
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise KDMError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    want = f"(N, {dim})" if dim is not None else "(N, D)"
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise KDMError(f"{name} must have shape {want}, got {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise KDMError(f"{name} is empty (shape {tuple(arr.shape)}); need at least one point")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        first = ", ".join(str(i) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise KDMError(f"{name} has {bad.size} of {arr.shape[0]} rows with NaN/inf "
                       f"(rows {first})")
    return arr


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate two point sets of the same dimension."""
    a, b = as_points(x, "x"), as_points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise KDMError(f"x and y differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def random_directions(projections: int, dim: int, seed: int = 0) -> np.ndarray:
    """``projections`` unit vectors drawn uniformly on the sphere, shape (projections, dim)."""
    if projections < 1:
        raise KDMError(f"projections must be >= 1, got {projections}")
    g = np.random.default_rng(seed).standard_normal((projections, dim))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact coupling of two 1-D empirical quantile functions with n and m atoms.

    On [0, 1] the quantile functions are step functions with breaks at k/n and l/m. On the
    integer grid t = s / (n m) the merged breaks are T; on the interval ending at T the sorted
    samples in use are x[ceil(T / m) - 1] and y[ceil(T / n) - 1]. Returns those indices and
    the interval lengths, each of shape (K,), K <= n + m.
    """
    ends = np.unique(np.concatenate([np.arange(1, n + 1, dtype=np.int64) * m,
                                     np.arange(1, m + 1, dtype=np.int64) * n]))
    ix = (ends + m - 1) // m - 1
    iy = (ends + n - 1) // n - 1
    weights = np.diff(ends, prepend=0) / (n * m)
    return ix, iy, weights


def sliced_wasserstein(x: Any, y: Any, projections: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between point sets x (N, D) and y (M, D).

    The mean over ``projections`` random unit directions (fixed by ``seed``) of the exact 1-D
    Wasserstein-1 distance between the projected samples, computed as the integral of
    |F_x^-1(t) - F_y^-1(t)| over t in [0, 1]; N and M may differ.
    """
    a, b = _pair(x, y)
    u = random_directions(projections, a.shape[1], seed)
    n, m = len(a), len(b)
    ix, iy, w = _quantile_grid(n, m)
    chunk = max(1, _CHUNK_ELEMENTS // (n + m + len(w)))
    total = 0.0
    for start in range(0, projections, chunk):
        uc = u[start:start + chunk].T  # (D, P_chunk)
        pa = np.sort(a @ uc, axis=0)
        pb = np.sort(b @ uc, axis=0)
        total += float(w @ np.abs(pa[ix] - pb[iy]).sum(axis=1))
    return total / projections


def _mean_distance(a: np.ndarray, b: np.ndarray, same: bool) -> float:
    """Mean Euclidean distance over pairs (a_i, b_j); with ``same`` (a is b) over i != j."""
    rows = max(1, _CHUNK_ELEMENTS // (len(b) * a.shape[1]))
    total = 0.0
    for start in range(0, len(a), rows):
        diff = a[start:start + rows, None, :] - b[None, :, :]
        total += float(np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)).sum())
    pairs = len(a) * (len(a) - 1) if same else len(a) * len(b)  # the diagonal adds zeros
    return total / pairs


def energy_distance(x: Any, y: Any, n: int = 5000, seed: int = 0) -> float:
    """Squared energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| with Euclidean norms.

    Each set is reduced to a random subsample (without replacement, fixed by ``seed``) of at
    most ``n`` points. The within-set terms are U-statistics (the i = j pairs are excluded),
    so the estimate is unbiased: about 0 for two samples of one distribution (and it may be
    slightly negative), clearly positive when the distributions differ. Memory stays bounded
    by computing distances in row blocks. Both sets need at least 2 points.
    """
    a, b = _pair(x, y)
    if n < 2:
        raise KDMError(f"energy distance subsample size must be >= 2, got {n}")
    if len(a) < 2 or len(b) < 2:
        raise KDMError(f"energy distance needs >= 2 points per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    if len(a) > n:
        a = a[rng.choice(len(a), n, replace=False)]
    if len(b) > n:
        b = b[rng.choice(len(b), n, replace=False)]
    return (2 * _mean_distance(a, b, same=False) - _mean_distance(a, a, same=True)
            - _mean_distance(b, b, same=True))


def paired_error(pred: Any, target: Any) -> dict[str, float]:
    """Errors between paired points (same noise), pred and target of equal shape (N, D).

    Returns ``mse`` (mean over all N * D coordinates of the squared error),
    ``sq_error_per_sample`` (mean over samples of ||pred - target||^2), its standard error
    ``sq_error_per_sample_se`` (the per-sample error is heavy-tailed when a few points land
    in another mode, so the mean is uncertain even at large N), ``rmse_per_sample`` (the
    square root of the mean), ``median_sq_error_per_sample`` and ``max_sq_error_per_sample``.
    """
    p, t = as_points(pred, "pred"), as_points(target, "target")
    if p.shape != t.shape:
        raise KDMError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    sq = np.sum((p - t) ** 2, axis=1)  # (N,)
    mean_sq = float(np.mean(sq))
    return {
        "mse": mean_sq / p.shape[1],
        "sq_error_per_sample": mean_sq,
        "sq_error_per_sample_se": float(np.std(sq, ddof=1) / np.sqrt(len(sq))) if len(sq) > 1
        else float("nan"),
        "rmse_per_sample": float(np.sqrt(mean_sq)),
        "median_sq_error_per_sample": float(np.median(sq)),
        "max_sq_error_per_sample": float(np.max(sq)),
    }


def distribution_metrics(x: Any, reference: Any, projections: int = 512, seed: int = 0,
                         energy_n: int = 5000) -> dict[str, float]:
    """``sliced_wasserstein`` and ``energy_distance`` of the point set x (N, D) to
    ``reference`` (M, D)."""
    return {"sliced_wasserstein": sliced_wasserstein(x, reference, projections, seed),
            "energy_distance": energy_distance(x, reference, energy_n, seed)}


def evaluate_vectors(
    samples: Any,
    *,
    reference: Any,
    reference_2: Any = None,
    paired_target: Any = None,
    projections: int = 512,
    seed: int = 0,
    energy_n: int = 5000,
) -> dict[str, float | int]:
    """The metrics of ``samples`` (N, D) against a ``reference`` set (M, D).

    Returns ``n``, ``n_reference``, ``sliced_wasserstein`` and ``energy_distance`` to the
    reference. With ``reference_2``, a second independent draw of the reference distribution,
    also ``sliced_wasserstein_floor`` and ``energy_distance_floor``: the same metrics between
    the two reference sets, i.e. what a perfect sampler scores at this sample size. With
    ``paired_target`` (N, D), the teacher outputs for the same noise as ``samples``, the
    :func:`paired_error` entries are added with a ``paired_`` prefix.
    """
    x = as_points(samples, "samples")
    ref = as_points(reference, "reference", dim=x.shape[1])
    out: dict[str, float | int] = {"n": len(x), "n_reference": len(ref),
                                   **distribution_metrics(x, ref, projections, seed, energy_n)}
    if reference_2 is not None:
        ref2 = as_points(reference_2, "reference_2", dim=x.shape[1])
        out.update({f"{k}_floor": v for k, v in distribution_metrics(
            ref2, ref, projections, seed, energy_n).items()})
    if paired_target is not None:
        target = as_points(paired_target, "paired_target", dim=x.shape[1])
        if target.shape != x.shape:
            raise KDMError(f"paired_target must match samples in shape: {target.shape} vs "
                           f"{x.shape}; pairs share their noise row by row")
        out.update({f"paired_{k}": v for k, v in paired_error(x, target).items()})
    return out
