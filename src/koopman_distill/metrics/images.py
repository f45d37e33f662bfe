"""Image-distribution metrics on extractor features: Fréchet distance and kernel distance.

Both compare two sets of feature vectors ``(N, d)`` produced by one extractor from
:mod:`.extractors`:

* Fréchet distance (FID when the features are the FID Inception's pool3):
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` between the Gaussians fitted to the
  two sets (Heusel et al., 2017).
* Kernel distance (KID): the unbiased estimate of the squared MMD with the cubic polynomial
  kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (Bińkowski et al., 2018).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..errors import KDMError


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``features (N, d)``, in float64."""
    f = _as_float64(features, "features", 2)
    if f.shape[0] < 2:
        raise KDMError(f"feature_stats needs at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu (d,), sigma (d, d).

    ``method="sqrtm"`` (default, the usual FID computation): ``tr((S1 S2)^(1/2))`` from
    :func:`scipy.linalg.sqrtm` of the (non-symmetric) product; when the result is not finite
    (a singular product, e.g. fewer samples than dimensions) both covariances are offset by
    ``eps * I`` and it is retried. Imaginary parts from round-off are dropped; a large one
    (``> 1e-3`` on the diagonal) means the covariances are not valid and raises KDMError.

    ``method="eig"``: ``tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i)`` with ``lambda_i`` the
    eigenvalues of the symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``),
    negatives from round-off clipped to 0. Equivalent in exact arithmetic, faster, and never
    complex; it agrees with ``sqrtm`` to round-off on well-conditioned covariances.
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1, "mu1")), np.atleast_1d(_as_float64(mu2, "mu2"))
    s1 = np.atleast_2d(_as_float64(sigma1, "sigma1"))
    s2 = np.atleast_2d(_as_float64(sigma2, "sigma2"))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise KDMError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 "
                       f"{s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
    elif method == "eig":
        tr_covmean = _trace_sqrt_product_eig(s1, s2)
    else:
        raise KDMError(f"frechet_distance: unknown method {method!r} (use 'sqrtm' or 'eig')")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _trace_sqrt_product_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    """``tr((s1 s2)^(1/2))`` via scipy's Schur-based sqrtm, with the eps*I retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns about singular inputs; we check ourselves
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = eps * np.eye(s1.shape[0])
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if not np.isfinite(covmean).all():
        raise KDMError("frechet_distance: the square root of sigma1 @ sigma2 is not finite even "
                       f"after adding {eps:g} * I; the covariances contain NaN/inf values")
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise KDMError(f"frechet_distance: sqrtm(sigma1 @ sigma2) has a large imaginary "
                           f"component ({imag:.3g}); are the covariances symmetric PSD?")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eig(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr((s1 s2)^(1/2))`` from the eigenvalues of ``s1^(1/2) s2 s1^(1/2)``."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def kernel_inception_distance(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor,
                              subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID between feature sets ``f1 (N1, d)`` and ``f2 (N2, d)``: (mean, std) over subsets.

    Each of ``subsets`` rounds draws ``m = min(subset_size, N1, N2)`` rows of each set without
    replacement and computes the unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``:
    ``sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1))
    - 2 sum_{i,j} k(x_i, y_j) / m^2``. Unbiased, so it can be slightly negative for two
    samples of one distribution.
    """
    x_all, y_all = _as_float64(f1, "f1", 2), _as_float64(f2, "f2", 2)
    if x_all.shape[1] != y_all.shape[1]:
        raise KDMError(f"kernel_inception_distance: feature dims differ: {x_all.shape[1]} vs "
                       f"{y_all.shape[1]}")
    if subsets < 1:
        raise KDMError(f"kernel_inception_distance: subsets must be >= 1, got {subsets}")
    d = x_all.shape[1]
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise KDMError(f"kernel_inception_distance needs at least 2 features per set, got {m}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        values[s] = ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                     + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                     - 2 * k_xy.sum() / (m * m))
    return float(values.mean()), float(values.std())


def extract_features(extractor: nn.Module, images: np.ndarray | torch.Tensor,
                     batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Run ``extractor`` over ``images (N, C, H, W)`` in [-1, 1]: features ``(N, dim)`` float32.

    Batches go to the extractor's device; runs in eval mode under ``torch.no_grad`` (the
    extractor's training flag is restored afterwards).
    """
    if images.ndim != 4:
        raise KDMError(f"extract_features expects images (N, C, H, W), got shape "
                       f"{tuple(images.shape)}")
    if batch_size < 1:
        raise KDMError(f"batch_size must be >= 1, got {batch_size}")
    param = next(iter(extractor.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    n = images.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n / batch_size), desc="features", unit="batch")
    was_training = extractor.training
    extractor.eval()
    out = []
    try:
        with torch.no_grad():
            for i in starts:
                batch = images[i:i + batch_size]
                batch = (torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch,
                         np.ndarray) else batch)
                feats = extractor(batch.to(device=device, dtype=torch.float32))
                out.append(feats.float().cpu().numpy())
    finally:
        extractor.train(was_training)
    if not out:
        dim = getattr(extractor, "dim", 0)
        return np.zeros((0, dim), np.float32)
    return np.concatenate(out, axis=0)


def _as_float64(a: np.ndarray | torch.Tensor, what: str, ndim: int | None = None) -> np.ndarray:
    """``a`` as a float64 numpy array, optionally checked to have ``ndim`` dimensions."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise KDMError(f"{what} must be a 2-D array (N, d), got shape {a.shape}")
    return a
