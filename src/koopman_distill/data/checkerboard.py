"""The paper's 2-D checkerboard: a 4x4 board of squares, 8 of 16 occupied, uniform inside.

In unscaled coordinates ``(u, v) = x / SCALE`` the board is ``[-2, 2)^2`` split into unit
cells ``(i, j) = (floor(u), floor(v))``; a cell is occupied iff ``i + j`` is even. Scaled by
``SCALE = 1 / 0.45`` the squares have side ~2.222 and the board spans ~[-4.444, 4.444]^2.
This is the distribution of the ``flow_matching`` library's checkerboard generator, which the
authors' teacher was trained on (reference §2.1).

Square numbering (``square_index``) is row-major over occupied cells, bottom row first and
left to right inside a row::

    row v in [ 1, 2):      6       7
    row v in [ 0, 1):  4       5
    row v in [-1, 0):      2       3
    row v in [-2,-1):  0       1
                     u: -2  -1   0   1   2

i.e. ``index = 2 * (j + 2) + (i + 2) // 2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import KDMError
from ..evaluation.table import Column

SCALE = 1 / 0.45
N_SQUARES = 8


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points uniformly from the 8 occupied squares.

    Returns a float32 tensor of shape (n, 2). Pass a seeded CPU ``generator`` for
    reproducible draws.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise KDMError(f"checkerboard sample count must be a non-negative integer, got {n!r}")
    u = torch.rand(n, generator=generator) * 4 - 2  # column coordinate, U(-2, 2)
    # v lands in [0, 1) or [-2, -1), shifted up by one in odd columns: always i + j even.
    v = torch.rand(n, generator=generator) - 2 * torch.randint(0, 2, (n,), generator=generator)
    v = v + torch.floor(u) % 2
    return torch.stack([u, v], dim=1) / 0.45


def _points(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``x`` as a float64 array of shape (N, 2), or a one-line KDMError."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise KDMError(
            f"points must be a numeric array of shape (N, 2), got {type(x).__name__}"
        ) from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise KDMError(f"points must have shape (N, 2), got {tuple(arr.shape)}")
    return arr


def square_index(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index 0..7 of the occupied square each point lies in, -1 elsewhere.

    ``x``: points of shape (N, 2) in board (scaled) coordinates. Returns int64 (N,). Gaps,
    points off the board and non-finite points get -1. Cells are half-open ``[i, i + 1)``, so
    a point exactly on a cell edge belongs to the cell above / to the right of it.
    """
    uv = _points(x) / SCALE
    with np.errstate(invalid="ignore"):
        cell = np.floor(uv)
        on_board = np.all((cell >= -2) & (cell <= 1), axis=1)  # False for NaN / inf
    cell = np.where(on_board[:, None], cell, 0).astype(np.int64)
    i, j = cell[:, 0], cell[:, 1]
    occupied = on_board & ((i + j) % 2 == 0)
    return np.where(occupied, 2 * (j + 2) + (i + 2) // 2, -1)


def inside_fraction(x: np.ndarray | torch.Tensor) -> float:
    """Fraction of the (N, 2) points that lie inside an occupied square (N must be > 0)."""
    idx = square_index(x)
    if idx.size == 0:
        raise KDMError("inside fraction of an empty point set is undefined; pass N > 0 points")
    return float(np.mean(idx >= 0))


def far_misses(samples: np.ndarray | torch.Tensor,
               target: np.ndarray | torch.Tensor) -> tuple[np.ndarray, dict[str, float]]:
    """Paired samples that land more than half a square side (``SCALE / 2``) from their
    targets: whole-mode mistakes, as opposed to imprecision inside a square.

    ``samples``, ``target``: (N, 2), row ``i`` made from the same noise. Returns the mask (N,)
    and ``far_miss_fraction`` with ``paired_sq_error_share_from_far_misses``, the share of the
    summed squared error that those samples carry.
    """
    p, t = _points(samples), _points(target)
    if p.shape != t.shape or len(p) == 0:
        raise KDMError(f"samples and target must be non-empty and paired, got {p.shape} and "
                       f"{t.shape}")
    sq = np.sum((p - t) ** 2, axis=1)
    far = sq > (SCALE / 2) ** 2
    total = float(sq.sum())
    return far, {"far_miss_fraction": float(far.mean()),
                 "paired_sq_error_share_from_far_misses": float(sq[far].sum()) / total if total
                 else 0.0}


def square_corners() -> np.ndarray:
    """Lower-left corners of the occupied squares in board coordinates, shape (8, 2).

    Row ``k`` is square ``k`` of :func:`square_index`; every square has side ``SCALE``.
    """
    cells = [(i, j) for j in range(-2, 2) for i in range(-2, 2) if (i + j) % 2 == 0]
    return np.array(cells, dtype=np.float64) * SCALE



class CheckerboardExtras:
    """The checkerboard's additions to the vector domain's evaluation (the protocol is
    :class:`~..evaluation.extras.DatasetExtras`): the inside rate, far misses, the board under
    the plots. Only for runs whose teacher learned this board (``data.source=checkerboard``)."""

    name = "checkerboard"
    columns = (Column("inside squares", "inside_fraction", ".4f"),)
    semantic_name = "square"
    shown = 10_000  # points drawn per noise-structure panel

    def metrics(self, samples: np.ndarray, target: np.ndarray | None) -> dict[str, float]:
        out = {"inside_fraction": inside_fraction(samples)}
        if target is not None:
            out.update(far_misses(samples, target)[1])
        return out

    def reference_metrics(self, reference: np.ndarray) -> dict[str, float]:
        return {"inside_fraction": inside_fraction(reference)}

    def training_metrics(self, samples: np.ndarray) -> dict[str, float]:
        return {"inside": inside_fraction(samples)}

    def quality_check(self, kdm: Mapping[str, Any], kd: Mapping[str, Any]) -> dict[str, Any]:
        gap = kdm["inside_fraction"] - kd["inside_fraction"]
        return {"kdm_inside_minus_kd_inside": gap, "quality_target_met": gap >= 0,
                "quality_check": f"KDM inside - KD inside = {gap:+.4f} (target >= 0)"}

    def semantic_labels(self, samples: np.ndarray) -> np.ndarray:
        return square_index(samples)

    def background(self, ax: Any) -> None:
        from ..analysis.plots import draw_board

        draw_board(ax)

    def caption(self, points: np.ndarray) -> str:
        return f"inside {inside_fraction(points):.2%}"

    def plots(self, out: Path, shown: Mapping[str, tuple[np.ndarray, np.ndarray]],
              target: str | None) -> dict[str, Path]:
        """``noise_structure.png`` (which noise lands in which square) of every entry and,
        against the teacher's (``target``), ``far_misses.png`` of the others."""
        from ..analysis import plots

        m = self.shown
        paths = {"noise_structure": plots.noise_structure(
            {name: (noise[:m], x[:m]) for name, (noise, x) in shown.items()},
            Path(out) / "noise_structure.png")}
        if target is not None and len(shown) > 1:
            noise, teacher = shown[target]
            paths["far_misses"] = plots.far_misses(
                {name: (noise, teacher, x) for name, (_, x) in shown.items() if name != target},
                Path(out) / "far_misses.png", background=m)
        return paths
