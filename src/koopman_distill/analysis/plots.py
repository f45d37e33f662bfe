"""Figures of samples (scatter panels, image grids), training and Koopman operators, and the
checkerboard's own figures (noise structure, far misses, the board), written as PNG files.

Figures are built with matplotlib's object API on an Agg canvas: this module never imports
``pyplot``, so it neither switches the global backend nor keeps figures alive. Styling is
applied with a temporary ``rc_context``. Every PNG is written atomically (a failed write
leaves no partial file) and every function returns the path it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

from ..data import checkerboard
from ..data.checkerboard import N_SQUARES, SCALE, square_corners, square_index
from ..errors import KDMError
from ..io import atomic_write
from ..metrics.vectors import as_points

DPI = 150
BOARD_LIM = 5.5  # axis half-width for checkerboard panels
PANEL_SIZE = 4.0  # inches per panel
SQUARE_COLORS = matplotlib.colormaps["Dark2"].colors[:N_SQUARES]  # qualitative, no pure red
OUTLIER_COLOR = "red"
DEFAULT_LOSS_KEYS = ("loss", "latent", "rec", "push")
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure on its own Agg canvas and its axes, shape (nrows, ncols)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``out_png`` atomically and return the path."""
    path = Path(out_png)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _scatter(ax: Any, pts: np.ndarray, **kw: Any) -> None:
    """Small rasterised markers, so 10^5 points keep the file light."""
    ax.scatter(pts[:, 0], pts[:, 1], s=kw.pop("s", 1.0), linewidths=kw.pop("linewidths", 0),
               rasterized=True, **kw)


def _limits(ax: Any, data: Sequence[np.ndarray]) -> None:
    """Equal-aspect axes around the central 99% of every panel's points, with a margin."""
    pts = np.concatenate(data)
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.05 * float(np.max(hi - lo)) or 1.0
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")


def scatter_compare(panels: Mapping[str, Any], out_png: str | os.PathLike,
                    title: str | None = None,
                    background: Callable[[Any], None] | None = None,
                    caption: Callable[[np.ndarray], str] | None = None,
                    axis_labels: tuple[str, str] | None = None) -> Path:
    """Side-by-side scatter panels of 2-D points (e.g. samples, or their projection).

    ``panels`` maps a label (e.g. ``"teacher (Heun x4)"``, ``"KDM (1 step)"``) to points of
    shape (N, 2). Every panel has the same limits, around the points (or those that
    ``background(ax)``, drawn first, sets: the checkerboard's board); ``caption(points)``
    adds a line to each panel's title after the point count.
    """
    if not panels:
        raise KDMError("scatter_compare needs at least one panel")
    data = {name: as_points(pts, f"panel {name!r}", dim=2) for name, pts in panels.items()}
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, len(data), PANEL_SIZE * len(data), PANEL_SIZE + 0.4)
        for ax, (name, pts) in zip(axes[0], data.items(), strict=True):
            if background is not None:
                background(ax)
            else:
                _limits(ax, list(data.values()))
            _scatter(ax, pts, color="C0", alpha=0.5)
            extra = f"\n{caption(pts)}" if caption is not None else ""
            ax.set_title(f"{name} (n={len(pts):,}){extra}")
            if axis_labels is not None:
                ax.set_xlabel(axis_labels[0])
                ax.set_ylabel(axis_labels[1])
        if title:
            fig.suptitle(title)
        return _save(fig, out_png)


def paths(panels: Mapping[str, Any], out_png: str | os.PathLike,
          context: np.ndarray | None = None,
          background: Callable[[Any], None] | None = None,
          axis_labels: tuple[str, str] | None = None) -> Path:
    """Sequences of 2-D points drawn as paths, one panel per entry (e.g. outputs along an
    interpolation in the latent and in the noise).

    ``panels`` maps a label to points (P, L, 2): P paths of L points, one colour each, the
    first point a circle and the last a square; ``context`` (N, 2) is drawn in light grey
    under every panel (e.g. all samples), after ``background(ax)`` (the checkerboard's board),
    which also sets the limits (else they fit the points).
    """
    if not panels:
        raise KDMError("paths needs at least one panel")
    data = {}
    for name, pts in panels.items():
        arr = np.asarray(pts, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[-1] != 2 or arr.shape[1] < 2:
            raise KDMError(f"panel {name!r} must hold paths of shape (P, L >= 2, 2), got "
                           f"{arr.shape}")
        data[name] = arr
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, len(data), PANEL_SIZE * len(data), PANEL_SIZE + 0.4)
        for ax, (name, arr) in zip(axes[0], data.items(), strict=True):
            if background is not None:
                background(ax)
            else:
                _limits(ax, [a.reshape(-1, 2) for a in data.values()]
                        + ([] if context is None else [context]))
            if context is not None:
                _scatter(ax, context, color="0.75", alpha=0.4)
            for i, path in enumerate(arr):
                color = f"C{i % 10}"
                ax.plot(path[:, 0], path[:, 1], color=color, linewidth=1.0, marker=".",
                        markersize=3)
                ax.plot(*path[0], marker="o", color=color, markersize=5)
                ax.plot(*path[-1], marker="s", color=color, markersize=5)
            ax.set_title(f"{name}\n{len(arr)} paths of {arr.shape[1]} points")
            if axis_labels is not None:
                ax.set_xlabel(axis_labels[0])
                ax.set_ylabel(axis_labels[1])
        return _save(fig, out_png)


def outlier_scatter(rows: Mapping[str, tuple[Any, Any, Any]], out_png: str | os.PathLike,
                    top: int, background: Callable[[Any], None] | None = None) -> Path:
    """Outliers and where their noise lies: ``rows`` maps a name (e.g. ``"KDM samples"``,
    ``"teacher pairs"``) to ``(noise, outputs, scores)``, points (N, 2) paired row by row
    and an outlier score (N,) each. Per row: left the outputs coloured by score (over
    ``background(ax)``), right the noise plane coloured the same; the ``top`` highest scores
    are circled in red on both."""
    data = {name: (noise, x, np.asarray(rows[name][2], dtype=np.float64)) for name, (noise, x)
            in _paired_rows({k: v[:2] for k, v in rows.items()}, ("noise", "outputs"),
                            "outlier_scatter").items()}
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(len(data), 2, 2 * PANEL_SIZE + 1.0, (PANEL_SIZE + 0.3) * len(data))
        for (left, right), (name, (noise, x, scores)) in zip(axes, data.items(), strict=True):
            order = np.argsort(scores)  # high scores drawn last, on top
            worst = order[::-1][:top]
            for ax, pts, what in ((left, x, "outputs"), (right, noise, "noise")):
                if ax is left and background is not None:
                    background(ax)
                else:  # every point: the outliers may be the extreme ones
                    lo, hi = pts.min(axis=0), pts.max(axis=0)
                    pad = 0.05 * float(np.max(hi - lo)) or 1.0
                    ax.set_xlim(lo[0] - pad, hi[0] + pad)
                    ax.set_ylim(lo[1] - pad, hi[1] + pad)
                    ax.set_aspect("equal")
                dots = ax.scatter(pts[order, 0], pts[order, 1], c=scores[order], s=3,
                                  cmap="viridis", linewidths=0, rasterized=True)
                ax.scatter(pts[worst, 0], pts[worst, 1], s=40, facecolors="none",
                           edgecolors=OUTLIER_COLOR, linewidths=0.8)
                ax.set_title(f"{name}: {what}, top {len(worst)} outliers circled")
            fig.colorbar(dots, ax=right, label="outlier score (mean kNN distance)")
        return _save(fig, out_png)


# -- the checkerboard's figures -------------------------------------------------------------
def draw_board(ax: Any, lim: float = BOARD_LIM) -> None:
    """Square axes with limits [-lim, lim] and the occupied squares outlined lightly."""
    for corner in square_corners():
        ax.add_patch(Rectangle(tuple(corner), SCALE, SCALE, fill=False, edgecolor="0.5",
                               linewidth=0.6, alpha=0.6, zorder=0))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


def _by_square(ax: Any, pts: np.ndarray, idx: np.ndarray) -> None:
    """Scatter ``pts`` (N, 2) coloured by square index ``idx`` (N,), -1 as red crosses."""
    for k in range(N_SQUARES):
        _scatter(ax, pts[idx == k], color=SQUARE_COLORS[k], alpha=0.6)
    out = pts[idx < 0]  # drawn last: the outliers are the point of the picture
    _scatter(ax, out, color=OUTLIER_COLOR, marker="x", s=6.0, linewidths=0.6)


def _paired_rows(rows: Mapping[str, Sequence[Any]], parts: tuple[str, ...],
                 figure: str) -> dict[str, tuple[np.ndarray, ...]]:
    """``rows`` (name -> one (N, 2) array per part, paired row by row) as float arrays, or a
    one-line KDMError naming the bad row."""
    if not rows:
        raise KDMError(f"{figure} needs at least one ({', '.join(parts)}) row")
    kind = {2: "pair", 3: "triple"}[len(parts)]
    data = {}
    for name, arrays in rows.items():
        if len(arrays) != len(parts):
            raise KDMError(f"row {name!r} must be a ({', '.join(parts)}) {kind}")
        pts = tuple(as_points(a, f"{name} {part}", dim=2)
                    for a, part in zip(arrays, parts, strict=True))
        if len({len(p) for p in pts}) > 1:
            counts = ", ".join(f"{part} {len(p)}" for part, p in zip(parts, pts, strict=True))
            raise KDMError(f"row {name!r} has {counts} points; they must be paired row by row")
        data[name] = pts
    return data


def noise_structure(rows: Mapping[str, tuple[Any, Any]], out_png: str | os.PathLike,
                    title: str | None = None) -> Path:
    """The noise-structure picture: which noise lands in which square.

    ``rows`` maps a method name (e.g. ``"teacher"``, ``"KDM"``) to ``(noise, samples)``, both
    of shape (N, 2) with ``samples[i]`` generated from ``noise[i]``. Each row has two panels:
    left the samples coloured by :func:`square_index` (8 qualitative colours; points in no
    square as red crosses), right the noise plane with each noise point coloured by the
    square its sample lands in. For a good one-step map the colours form contiguous angular
    sectors, and the outliers come from the sector boundaries (reference §9.1).
    """
    data = {name: (noise, samples, square_index(samples)) for name, (noise, samples) in
            _paired_rows(rows, ("noise", "samples"), "noise_structure").items()}
    noise_lim = 1.05 * max(np.abs(noise).max() for noise, _, _ in data.values())
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(len(data), 2, 2 * PANEL_SIZE, (PANEL_SIZE + 0.3) * len(data))
        for (left, right), (name, (noise, samples, idx)) in zip(axes, data.items(), strict=True):
            outside = float(np.mean(idx < 0))
            draw_board(left)
            _by_square(left, samples, idx)
            left.set_title(f"{name}: samples, outside squares {outside:.2%}")
            _by_square(right, noise, idx)
            right.set_xlim(-noise_lim, noise_lim)
            right.set_ylim(-noise_lim, noise_lim)
            right.set_aspect("equal")
            right.set_title(f"{name}: noise coloured by landing square")
        if title:
            fig.suptitle(title)
        return _save(fig, out_png)


def far_misses(rows: Mapping[str, tuple[Any, Any, Any]], out_png: str | os.PathLike,
               background: int = 10_000, title: str | None = None) -> Path:
    """Where a student misses its teacher by a whole mode: the noise plane coloured by the
    teacher's landing square, with each noise point whose student sample lands more than half
    a square side from the teacher's as a black cross (:func:`~..data.checkerboard.far_misses`).

    ``rows`` maps a student's name to ``(noise, teacher, student)``, each of shape (N, 2) and
    paired row by row; one panel per row. Every far miss is drawn, the background is the
    first ``background`` points. These few points usually carry most of the paired error.
    """
    data = {}
    for name, (noise, teacher, student) in _paired_rows(
            rows, ("noise", "teacher", "student"), "far_misses").items():
        far, stats = checkerboard.far_misses(student, teacher)
        data[name] = (noise, square_index(teacher), far, stats)
    lim = 1.05 * max(np.abs(noise).max() for noise, _, _, _ in data.values())
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, len(data), PANEL_SIZE * len(data), PANEL_SIZE + 0.4)
        for ax, (name, (noise, idx, far, stats)) in zip(axes[0], data.items(), strict=True):
            m = min(len(noise), background)
            for k in range(N_SQUARES):
                _scatter(ax, noise[:m][idx[:m] == k], color=SQUARE_COLORS[k], alpha=0.35)
            _scatter(ax, noise[far], color="black", marker="x", s=8.0, linewidths=0.7)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            share = stats["paired_sq_error_share_from_far_misses"]
            ax.set_title(f"{name}\n{int(far.sum()):,} of {len(noise):,} > half a square from the "
                         f"teacher's,\ncarrying {share:.0%} of the paired error")
        if title:
            fig.suptitle(title)
        return _save(fig, out_png)


# -- Koopman operators, training, images, benchmarks --------------------------------------
def spectrum(eigenvalues: Mapping[str, Any], out_png: str | os.PathLike,
             title: str | None = None) -> Path:
    """Eigenvalues in the complex plane against the unit circle.

    ``eigenvalues`` maps a label to a 1-D array of complex eigenvalues (K,), e.g.
    ``np.linalg.eigvals(K)``. The legend names each entry with its count; a text box gives
    each entry's spectral radius (max |λ|) and how many eigenvalues lie outside the circle.
    """
    if not eigenvalues:
        raise KDMError("spectrum needs at least one set of eigenvalues")
    data = {}
    for name, ev in eigenvalues.items():
        if hasattr(ev, "detach"):
            ev = ev.detach().cpu().numpy()
        arr = np.asarray(ev)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise KDMError(f"eigenvalues {name!r} must be a non-empty 1-D numeric array, got "
                           f"shape {arr.shape}; pass np.linalg.eigvals(K), not K")
        arr = arr.astype(np.complex128)
        if not np.isfinite(arr).all():
            raise KDMError(f"eigenvalues {name!r} hold {int((~np.isfinite(arr)).sum())} "
                           "NaN/inf values")
        data[name] = arr
    lim = max(1.15, 1.08 * max(np.abs(np.concatenate([a.real, a.imag])).max()
                               for a in data.values()))
    lines = []
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, 1, PANEL_SIZE + 0.8, PANEL_SIZE + 0.8)
        ax = axes[0, 0]
        ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.3", linestyle="--", linewidth=0.8))
        for i, (name, ev) in enumerate(data.items()):
            ax.scatter(ev.real, ev.imag, s=10, alpha=0.6, color=f"C{i}", linewidths=0,
                       label=f"{name} (n={ev.size})")
            mod = np.abs(ev)
            lines.append(f"{name}: spectral radius max|λ| = {mod.max():.4g}, "
                         f"{int((mod > 1).sum())}/{ev.size} with |λ| > 1")
        ax.text(0.02, 0.02, "\n".join(lines), transform=ax.transAxes, fontsize=7,
                va="bottom", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("Re(λ)")
        ax.set_ylabel("Im(λ)")
        ax.legend(loc="upper right")
        ax.set_title(title or "Koopman spectrum")
        return _save(fig, out_png)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def loss_curves(log_rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike,
                keys: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Training curves on a log scale from the trainer's ``log.jsonl`` rows.

    Each row needs an integer ``"step"``; a key is plotted at the steps where it holds a
    number. ``keys`` defaults to those of :data:`DEFAULT_LOSS_KEYS` present in the rows plus
    any numeric key whose name contains ``"loss"``. Non-positive and non-finite values are
    left out (a log axis cannot show them).
    """
    if not log_rows:
        raise KDMError("loss_curves needs at least one log row")
    for i, row in enumerate(log_rows):
        if not _is_number(row.get("step")):
            raise KDMError(f"log row {i} has no numeric 'step': {dict(row)}")
    present = list(dict.fromkeys(k for row in log_rows for k, v in row.items()
                                 if k != "step" and _is_number(v)))
    if keys is None:
        keys = [k for k in present if k in DEFAULT_LOSS_KEYS or "loss" in k.lower()]
        if not keys:
            raise KDMError(f"no loss keys in the log rows; numeric keys are {present}; "
                           "pass keys=[...]")
    missing = [k for k in keys if k not in present]
    if missing:
        raise KDMError(f"keys {missing} not found in the log rows; numeric keys are {present}")
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, 1, 1.6 * PANEL_SIZE, PANEL_SIZE)
        ax = axes[0, 0]
        for i, key in enumerate(keys):
            pts = np.array([(row["step"], row[key]) for row in log_rows
                            if _is_number(row.get(key))], dtype=np.float64).reshape(-1, 2)
            pts = pts[np.isfinite(pts[:, 1]) & (pts[:, 1] > 0)]
            ax.plot(pts[:, 0], pts[:, 1], color=f"C{i}", linewidth=1.0, label=key)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        if title:
            ax.set_title(title)
        return _save(fig, out_png)


def tile(images: Any, nrow: int, pad: int = 1) -> np.ndarray:
    """Images (N, C, R, R) in [-1, 1] -> one (H, W, C) array in [0, 1], ``nrow`` per row,
    ``pad`` white pixels between tiles."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1) / 2, 0, 1)
    if x.ndim != 4 or len(x) == 0:
        raise KDMError(f"images must have shape (N, C, R, R) with N >= 1, got {x.shape}")
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


def image_grids(panels: Mapping[str, Any], out_png: str | os.PathLike, nrow: int = 10,
                row_labels: Sequence[str] | None = None) -> Path:
    """Side-by-side grids of images (N, C, R, R) in [-1, 1], one panel per entry (e.g. the
    teacher and KDM on the same noise); ``row_labels`` name the grid rows (e.g. classes)."""
    if not panels:
        raise KDMError("image_grids needs at least one panel")
    grids = {k: tile(v, nrow) for k, v in panels.items()}
    h, w, _ = next(iter(grids.values())).shape
    scale = PANEL_SIZE / max(h, w) * 1.3
    with matplotlib.rc_context({**_STYLE, "axes.grid": False}):
        fig, axes = _figure(1, len(grids), scale * w * len(grids) + 0.6, scale * h + 0.4)
        for ax, (title, g) in zip(axes[0], grids.items(), strict=True):
            ax.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title)
            ax.set_xticks([])
            if row_labels is not None and ax is axes[0][0]:
                step = (h - 1) / len(row_labels)
                ax.set_yticks([1 + step * (i + 0.5) for i in range(len(row_labels))],
                              list(row_labels))
            else:
                ax.set_yticks([])
        return _save(fig, out_png)


def quality_vs_nfe(series: Mapping[str, Sequence[tuple[int, float]]], metric: str,
                   out_png: str | os.PathLike, lower_is_better: bool = True,
                   title: str | None = None,
                   x_label: str = "NFE (network evaluations per sample)") -> Path:
    """One line (or marker, for a single point) per method: ``series`` maps a method name to
    (NFE, value) points (or other counts, named by ``x_label``); the x axis is logarithmic."""
    if not series or not any(series.values()):
        raise KDMError("quality_vs_nfe needs at least one (NFE, value) point")
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(1, 1, 1.6 * PANEL_SIZE, PANEL_SIZE)
        ax = axes[0, 0]
        for i, (name, pts) in enumerate(series.items()):
            xy = np.array(sorted(pts), dtype=np.float64).reshape(-1, 2)
            ax.plot(xy[:, 0], xy[:, 1], marker="o", color=f"C{i}", linewidth=1.0, label=name)
        ax.set_xscale("log", base=2)
        values = np.array([v for pts in series.values() for _, v in pts], dtype=np.float64)
        if values.min() > 0 and values.max() > 20 * values.min():  # a wide range: log scale
            ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
        ax.legend()
        if title:
            ax.set_title(title)
        return _save(fig, out_png)
