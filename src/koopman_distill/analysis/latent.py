"""The computations of ``kdm analyze``, on arrays: neighbours, agreement, rank correlation,
interpolation paths, eigen-directions of K and outlier scores.

Points are rows of float arrays (N, F) (latents, flattened noise or output features). A
``groups`` array (N,) restricts every comparison to rows of one group (a conditional model's
requested label); None compares all rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from ..errors import KDMError

CHUNK = 1024  # query rows per distance block (N x CHUNK float32 at once)


@dataclass(frozen=True)
class Semantics:
    """How outputs are compared, from the domain (and the dataset's extras):
    ``labels(outputs (N, *shape)) -> (N,)`` int64 semantic labels (-1: none, e.g. a point in
    no square), or None where there are none, and what they are (``label_name``);
    ``features(outputs) -> (N, F)``, the space outlier scores are measured in
    (``feature_name``)."""

    labels: Callable[[np.ndarray], np.ndarray] | None
    label_name: str | None
    features: Callable[[np.ndarray], np.ndarray]
    feature_name: str


def flat(x: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, F) float32."""
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


def _same_group(groups: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)


def check_neighbours(groups: np.ndarray | None, n: int, k: int) -> None:
    """A one-line KDMError unless every row has ``k`` others in its group."""
    values, counts = np.unique(_same_group(groups, n), return_counts=True)
    if k < 1 or counts.min() <= k:
        where = "" if groups is None else f" of its requested label ({values[counts.argmin()]} " \
            f"has {counts.min()} samples)"
        raise KDMError(f"--n {n} is too small for --k {k} neighbours: every sample needs {k} "
                       f"others{where}; raise --n or lower --k (k >= 1)")


def neighbours(x: np.ndarray, k: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices (N, k) of each row's k nearest other rows of its group (Euclidean), nearest
    first."""
    pts = torch.from_numpy(flat(x))
    g = torch.from_numpy(_same_group(groups, len(pts)))
    out = []
    for i in range(0, len(pts), CHUNK):
        d = torch.cdist(pts[i:i + CHUNK], pts)
        rows = torch.arange(i, min(i + CHUNK, len(pts)))
        d[g[rows, None] != g[None, :]] = torch.inf
        d[torch.arange(len(rows)), rows] = torch.inf
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out).numpy()


def random_neighbours(n: int, k: int, groups: np.ndarray | None,
                      rng: np.random.Generator) -> np.ndarray:
    """Indices (N, k) of k distinct random other rows of each row's group."""
    g = _same_group(groups, n)
    out = np.empty((n, k), np.int64)
    for value in np.unique(g):
        members = np.flatnonzero(g == value)
        for pos, i in enumerate(members):
            pick = rng.choice(len(members) - 1, k, replace=False)
            out[i] = members[pick + (pick >= pos)]  # skip the row itself
    return out


def agreement(labels: np.ndarray, idx: np.ndarray) -> float:
    """Fraction of (row, neighbour) pairs with the same label (a label of -1 agrees with
    nothing)."""
    own = labels[:, None]
    return float(np.mean((labels[idx] == own) & (own >= 0)))


def mean_distance(x: np.ndarray, idx: np.ndarray) -> float:
    """Mean Euclidean distance from each row of ``x`` (N, F) to its rows ``idx`` (N, k)."""
    pts = flat(x).astype(np.float64)
    return float(np.mean(np.linalg.norm(pts[idx] - pts[:, None], axis=-1)))


def random_pairs(n: int, m: int, groups: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``m`` random pairs (i, j), i != j, of rows of one group: two arrays (m,)."""
    g = _same_group(groups, n)
    i = rng.integers(0, n, m)
    members = {v: np.flatnonzero(g == v) for v in np.unique(g)}
    j = np.empty(m, np.int64)
    for v, rows in members.items():
        here = np.flatnonzero(g[i] == v)
        pos = np.searchsorted(rows, i[here])
        pick = rng.integers(0, len(rows) - 1, len(here))
        j[here] = rows[pick + (pick >= pos)]
    return i, j


def pair_distances(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """||x_i - x_j|| for pairs (m,)."""
    pts = flat(x).astype(np.float64)
    return np.linalg.norm(pts[i] - pts[j], axis=1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two samples (m,)."""
    return float(spearmanr(a, b).statistic)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows a, b (P, *shape) at fractions t (L,): (P, L, *shape).
    Between noise of equal norm it keeps the norm (a straight line would shrink it, where
    the model saw no noise)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]  # (P, 1)
    tt = t.double()[None, :]
    wa = torch.sin((1 - tt) * theta) / torch.sin(theta)
    wb = torch.sin(tt * theta) / torch.sin(theta)
    out = wa[..., None] * fa[:, None] + wb[..., None] * fb[:, None]
    return out.reshape(len(a), len(t), *a.shape[1:]).to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight lines between rows a, b (P, d) at fractions t (L,): (P, L, d)."""
    tt = t.to(a.dtype)[None, :, None]
    return (1 - tt) * a[:, None] + tt * b[:, None]


def path_ratio(paths: np.ndarray) -> float:
    """Mean over paths (P, L, ...) of their length over the distance between their ends: 1
    for a straight walk, large for one that jumps about."""
    pts = np.asarray(paths, dtype=np.float64).reshape(*paths.shape[:2], -1)
    length = np.linalg.norm(np.diff(pts, axis=1), axis=-1).sum(1)
    ends = np.linalg.norm(pts[:, -1] - pts[:, 0], axis=-1)
    return float(np.mean(length / np.maximum(ends, 1e-12)))


def eigen_directions(K: torch.Tensor, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` leading eigenvalues of K (d, d) by modulus, one of each conjugate pair
    (complex (m,)), and a real unit direction of each (d, m): the real part of its
    eigenvector, rotated in phase to be largest (for a complex pair it spans, with the
    imaginary part, the plane K rotates)."""
    lam, V = torch.linalg.eig(K.detach().double().cpu())
    lam, V = lam.numpy(), V.numpy()
    keep = np.flatnonzero(lam.imag >= 0)
    keep = keep[np.argsort(-np.abs(lam[keep]), kind="stable")][:count]
    dirs = []
    for i in keep:
        u = V[:, i]
        u = u * np.exp(-1j * np.angle(u[np.argmax(np.abs(u))]))
        dirs.append(u.real / np.linalg.norm(u.real))
    return lam[keep], np.stack(dirs, axis=1)


def knn_scores(features: np.ndarray, k: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Outlier score of each row (N,): its mean distance to its k nearest rows of its group."""
    idx = neighbours(features, k, groups)
    pts = flat(features).astype(np.float64)
    return np.linalg.norm(pts[idx] - pts[:, None], axis=-1).mean(1)


def outlier_summary(scores: np.ndarray, noise: np.ndarray, top: int,
                    labels: np.ndarray | None = None) -> dict:
    """The ``top`` highest scores with their row, the percentile of their noise's norm among
    all rows (where their noise lies: far out, or near the centre) and their label; the
    median score, and the rank correlation of score with noise norm."""
    norm = np.linalg.norm(flat(noise).astype(np.float64), axis=1)
    pct = 100 * (np.argsort(np.argsort(norm)) + 0.5) / len(norm)
    order = np.argsort(-scores, kind="stable")[:top]
    return {"top": [{"index": int(i), "score": float(scores[i]),
                     "noise_norm_percentile": float(pct[i]),
                     **({"label": int(labels[i])} if labels is not None else {})}
                    for i in order],
            "score_median": float(np.median(scores)),
            "score_vs_noise_norm_spearman": spearman(scores, norm)}
