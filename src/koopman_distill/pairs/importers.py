"""Importers for the KDM paper authors' pair data.

Two formats (reference, sections 2.1-2.2):

- a trajectory ``.npy`` of shape ``(T, N, D)`` (the 2-D checkerboard file): T snapshots of N
  ODE trajectories; only the two ends are kept;
- a folder with one ``.npz`` per example: key ``arr_0`` holding a trajectory ``(T, C, H, W)``,
  or key ``endpoints`` ``(2, C, H, W)`` with ``label`` (one-hot vector or class id).

The authors' files disagree on which end is the noise, so the position is never trusted: with
``order="auto"`` the noise end is recognised by its statistics (:func:`detect_order`), and the
manifest's ``source`` records the order used and why, with the measured noise scale.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import KDMError
from .manifest import IDENTITY_KEYS, new_manifest, num_shards, shard_len
from .store import (
    PairStore,
    _as_shard,
    _check_sigma,
    _open_checked,
    _positive_int,
    write_arrays,
)

_ORDERS = ("auto", "noise-first", "clean-first")
_DETECT_MAX = 256  # folder files sampled for order detection and the noise scale
_STD_RATIO = 10.0  # an end whose std is this many times below the other's cannot be the noise
_TEACHER = {"kind": "external", "note": "imported pairs; the teacher is not known here"}


def _end_stats(x: np.ndarray) -> dict[str, float]:
    """Statistics of one trajectory end ``x`` (n, *dims) across its n samples.

    kurtosis: mean over coordinates of the bias-corrected sample kurtosis (3 for Gaussian
    coordinates, 1.8 for uniform ones; NaN if a coordinate is constant); mean_z: RMS over
    coordinates of ``sqrt(n) * mean / std`` (about 1 for zero-mean noise); std: over all values.
    """
    x = x.reshape(len(x), -1).astype(np.float64)
    n = len(x)
    c = x - x.mean(axis=0)
    m2, m4 = (c**2).mean(axis=0), (c**4).mean(axis=0)
    if (m2 <= 0).any():
        return {"kurtosis": math.nan, "mean_z": math.nan, "std": float(x.std())}
    g2 = m4 / m2**2 - 3.0
    excess = ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))  # unbiased under normality
    z = x.mean(axis=0) / np.sqrt(m2 * n / (n - 1))
    return {"kurtosis": 3.0 + float(excess.mean()), "mean_z": math.sqrt(n * float((z**2).mean())),
            "std": float(x.std())}


def _is_gaussian(s: dict[str, float], n: int, d: int) -> bool:
    """Whether end statistics ``s`` (n samples, d coordinates) fit zero-mean Gaussian noise."""
    tol = 0.4 + 4.0 * math.sqrt(24.0 / (n * d))  # 4 standard errors of the mean kurtosis
    return abs(s["kurtosis"] - 3.0) < tol and s["mean_z"] < 3.0


def _order_evidence(first: np.ndarray, last: np.ndarray) -> tuple[str, str]:
    """(order, one-line reason) from the two ends ``first``/``last`` (n, *dims)."""
    if first.shape != last.shape or first.ndim < 2:
        raise KDMError(f"trajectory ends have shapes {first.shape} and {last.shape}; expected "
                       "one shape (n, *dims)")
    n, d = len(first), math.prod(first.shape[1:])
    if n < 4:
        raise KDMError(f"cannot tell which end is noise from {n} examples (need at least 4); "
                       "pass --order noise-first or clean-first")
    stats = [_end_stats(first), _end_stats(last)]
    noise = [_is_gaussian(s, n, d) for s in stats]
    lo, hi = sorted((0, 1), key=lambda k: stats[k]["std"])
    if all(noise) and stats[lo]["std"] * _STD_RATIO < stats[hi]["std"]:
        noise[lo] = False  # e.g. EDM noise (std 80) against images in [-1, 1]
    desc = "; ".join(f"{end} end: kurtosis {s['kurtosis']:.3g}, mean z {s['mean_z']:.3g}, "
                     f"std {s['std']:.3g}"
                     for end, s in zip(("first", "last"), stats, strict=True))
    if noise[0] == noise[1]:
        raise KDMError(f"cannot tell which end is noise ({'both' if noise[0] else 'neither'} "
                       f"look like zero-mean Gaussian noise; {desc}); pass --order noise-first "
                       "or clean-first")
    end = "first" if noise[0] else "last"
    return (f"{'noise' if noise[0] else 'clean'}-first",
            f"detected from {n} examples: the {end} end looks like zero-mean Gaussian noise "
            f"({desc})")


def detect_order(first: np.ndarray, last: np.ndarray) -> str:
    """``"noise-first"`` or ``"clean-first"``, judged from the trajectory ends ``first`` and
    ``last`` (n, *dims), n >= 4 samples each.

    The noise end is zero-mean Gaussian: per-coordinate kurtosis near 3 and mean small next to
    the std. If both ends pass, one whose std is over 10x below the other's is taken as clean
    (EDM noise has std 80, images lie in [-1, 1]). Raises a KDMError if both or neither end
    looks like noise.
    """
    return _order_evidence(first, last)[0]


def _resolve_order(order: str, first: np.ndarray, last: np.ndarray) -> tuple[str, str]:
    return _order_evidence(first, last) if order == "auto" else (order, "given by the caller")


def _check_order_arg(order: str) -> None:
    if order not in _ORDERS:
        raise KDMError(f"order must be one of {', '.join(_ORDERS)}, got {order!r}")


def _noise_scale(given: float | None, noise: np.ndarray) -> tuple[float, dict[str, Any]]:
    """sigma_max (given, or the noise end's measured std to 2 significant digits) and the
    manifest fields recording it."""
    measured = float(np.std(noise, dtype=np.float64))
    sigma = float(f"{measured:.2g}") if given is None else float(given)
    how = "given by the caller" if given is not None else \
        "measured std of the noise end, rounded to 2 significant digits"
    return sigma, {"sigma_max_measured": round(measured, 6), "sigma_max_from": how}


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _check_trajectory_finite(arr: np.ndarray, src: Path) -> None:
    """Raise if ``arr`` (T, N, D) holds NaN/inf, with the count and the first (t, n) places."""
    count, where = 0, []
    for t in range(len(arr)):
        bad = ~np.isfinite(arr[t])
        if bad.any():
            count += int(bad.sum())
            where += [(t, int(i)) for i in np.flatnonzero(bad.any(axis=1))[:5 - len(where)]]
    if count:
        raise KDMError(f"{src} has {count} non-finite values (NaN/inf), first at (t, n) "
                       f"{where}; fix or regenerate the file (nothing was written)")


def import_trajectory(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                      order: str = "auto", sigma_max: float | None = None,
                      shard_size: int = 10_000, progress: bool = True) -> PairStore:
    """Import a trajectory file ``src``: a float ``.npy`` of shape ``(T, N, D)`` (T >= 2 time
    steps, N samples, D coordinates), e.g. the authors' checkerboard ``sampled_dataset.npy``
    (index 0 noise, T-1 clean). Writes its two ends as N pairs of shape ``(D,)``.

    ``order``: ``"auto"`` (detect from statistics), ``"noise-first"`` or ``"clean-first"``.
    ``sigma_max``: the noise scale; by default the noise end's measured std, rounded.
    The file is validated (and checked for NaN/inf) before anything is written.
    """
    _check_order_arg(order)
    shard_size = _positive_int(shard_size, "shard_size")
    path = Path(src)
    if not path.is_file():
        raise KDMError(f"trajectory file not found: {path}")
    if path.suffix != ".npy":
        raise KDMError(f"{path} is not a .npy file; expected an array of shape (T, N, D) "
                       "saved with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise KDMError(f"cannot read {path} as a .npy array ({_first_line(e)}); it may be "
                       "truncated or not a .npy file") from None
    if not isinstance(arr, np.ndarray):
        raise KDMError(f"{path} is an .npz archive, not a single .npy array; expected (T, N, D)")
    if arr.ndim != 3:
        raise KDMError(f"{path} has shape {arr.shape} (ndim {arr.ndim}); expected ndim 3: "
                       "(T time steps, N samples, D coordinates)")
    steps, n, d = arr.shape
    if steps < 2 or n < 1 or d < 1:
        raise KDMError(f"{path} has shape {arr.shape}; need T >= 2 time steps (a noise and a "
                       "clean end) and N, D >= 1")
    if arr.dtype.kind != "f":
        raise KDMError(f"{path} holds {arr.dtype} values; expected floating point (float32)")
    _check_trajectory_finite(arr, path)
    sample = slice(None, None, max(1, n // 100_000))  # plenty for the statistics
    order, reason = _resolve_order(order, arr[0, sample], arr[-1, sample])
    noise, clean = (arr[0], arr[-1]) if order == "noise-first" else (arr[-1], arr[0])
    sigma, sigma_fields = _noise_scale(sigma_max, noise[sample])
    source = {"kind": "trajectory-npy", "path": str(path.resolve()),
              "bytes": path.stat().st_size, "steps": steps, "order": order,
              "order_reason": reason, **sigma_fields}
    return write_arrays(out_dir, noise, clean, shard_size=shard_size, sigma_max=sigma,
                        teacher=_TEACHER, sampler={"method": "unknown", "trajectory_steps": steps},
                        nfe=None, source=source, progress=progress)


def _list_npz(folder: Path) -> list[Path]:
    """The folder's ``.npz`` files sorted by name; hidden entries are skipped, others refused."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    other = [p.name for p in entries if p.suffix != ".npz" or not p.is_file()]
    if other:
        raise KDMError(f"{folder} holds {other[0]!r}, which is not an .npz file ({len(other)} "
                       "such entries); move them out, the folder must hold only per-example "
                       ".npz files")
    if not entries:
        raise KDMError(f"{folder} holds no .npz files")
    return entries


def _scan_npz(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], Any]:
    """Shapes and dtypes of the arrays in ``path`` (headers only) and its ``label`` value."""
    header, label = {}, None
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                key = name.removesuffix(".npy")
                with z.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(member)
                    held = z.getinfo(name).file_size - member.tell()
                if math.prod(shape) * dtype.itemsize > held:  # before numpy allocates it
                    raise KDMError(f"{path}: {key} claims shape {shape} of {dtype} but holds "
                                   f"only {held} bytes; the file is truncated or corrupt")
                header[key] = (shape, dtype)
                if key == "label":
                    with z.open(name) as member:
                        label = np.lib.format.read_array(member, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise KDMError(f"cannot read {path} as .npz ({_first_line(e)}); it may be truncated "
                       "or corrupt") from None
    return header, label


def _data_key(path: Path, header: dict[str, tuple[tuple[int, ...], np.dtype]]) -> str:
    """Which key holds the example (``arr_0`` or ``endpoints``), after checking the layout."""
    keys = set(header)
    data = keys & {"arr_0", "endpoints"}
    if len(data) != 1 or keys - {"arr_0", "endpoints", "label"}:
        raise KDMError(f"{path} has keys {sorted(keys)}; expected 'arr_0' (a trajectory "
                       "(T, C, H, W)) or 'endpoints' (2, C, H, W), optionally with 'label'")
    key = data.pop()
    shape = header[key][0]
    if len(shape) < 2 or shape[0] < 2 or (key == "endpoints" and shape[0] != 2):
        want = "(2, *example_shape)" if key == "endpoints" else "(T >= 2, *example_shape)"
        raise KDMError(f"{path}: {key} has shape {shape}; expected {want}")
    if "label" in header and len(header["label"][0]) > 1:
        raise KDMError(f"{path}: label has shape {header['label'][0]}; expected a class id () "
                       "or a one-hot vector (K,)")
    return key


def _class_id(label: np.ndarray, path: Path, num_classes: int | None) -> int:
    """Class id of one stored label: an integer scalar, or the argmax of a one-hot (K,)."""
    if label.ndim == 0:
        if label.dtype.kind not in "iuf" or not float(label).is_integer():
            raise KDMError(f"{path}: label {label.item()!r} is not an integer class id")
        cid = int(label)
    else:
        if (label.dtype.kind not in "biuf" or not np.all((label == 0) | (label == 1))
                or label.sum() != 1):
            raise KDMError(f"{path}: label {label.tolist()[:10]} is not one-hot; expected a "
                           "one-hot vector or an integer class id")
        cid = int(np.argmax(label))
    if cid < 0 or (num_classes is not None and cid >= num_classes):
        raise KDMError(f"{path}: class id {cid} is outside [0, {num_classes}); check "
                       "--num-classes")
    return cid


def _load_ends(path: Path, key: str) -> np.ndarray:
    """The first and last entries of array ``key`` in ``path``: (2, *shape), all finite."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ends = z[key][[0, -1]]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise KDMError(f"cannot read {path} as .npz ({_first_line(e)}); it may be truncated "
                       "or corrupt") from None
    bad = int(np.count_nonzero(~np.isfinite(ends)))
    if bad:
        raise KDMError(f"{path} has {bad} non-finite values (NaN/inf) in its noise/clean ends; "
                       "fix or remove the file")
    return ends


def import_npz_folder(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                      order: str = "auto", sigma_max: float | None = None,
                      shard_size: int = 10_000, num_classes: int | None = None,
                      progress: bool = True) -> PairStore:
    """Import a folder with one ``.npz`` per example (files sorted by name; names starting
    with ``.`` are skipped, any other non-.npz entry is an error).

    Each file holds ``arr_0``, a trajectory ``(T, C, H, W)`` with T >= 2 (ends kept), or
    ``endpoints`` ``(2, C, H, W)``, optionally with ``label``: a one-hot vector ``(K,)`` or an
    integer class id, stored as an int64 class id. All files must share keys and shapes; this
    and the labels are checked (reading headers and labels only) before anything is written.
    ``order``/``sigma_max`` as in :func:`import_trajectory`, judged on up to 256 files spread
    over the folder and applied to all. ``num_classes`` bounds the class ids (one-hot labels
    must have that length). Data is streamed one shard at a time.
    """
    _check_order_arg(order)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise KDMError(f"num_classes must be a positive integer, got {num_classes!r}")
    shard_size = _positive_int(shard_size, "shard_size")
    folder, out = Path(src), Path(out_dir)
    if not folder.is_dir():
        raise KDMError(f"npz folder not found: {folder} is not a directory")
    if out.resolve().is_relative_to(folder.resolve()):
        raise KDMError(f"the store {out} would lie inside the folder {folder} it is imported "
                       "from; put --out elsewhere")
    files = _list_npz(folder)

    ref, _ = _scan_npz(files[0])
    key = _data_key(files[0], ref)
    shape = tuple(ref[key][0][1:])
    labels: list[int] | None = [] if "label" in ref else None
    label_shape = ref["label"][0] if "label" in ref else None
    if label_shape and num_classes is not None and label_shape[0] != num_classes:
        raise KDMError(f"{files[0]}: one-hot label has length {label_shape[0]} but num_classes "
                       f"is {num_classes}")
    for path in files:  # headers and labels only: cheap, and nothing is written on failure
        header, label = _scan_npz(path)
        diff = ([f"keys {sorted(header)} vs {sorted(ref)}"] if set(header) != set(ref) else
                [f"{k} shape {header[k][0]} vs {ref[k][0]}" for k in ref
                 if header[k][0] != ref[k][0]])
        if diff:
            raise KDMError(f"{path} differs from {files[0].name} ({diff[0]}); all files must "
                           "share keys and shapes")
        if header[key][1].kind != "f":
            raise KDMError(f"{path}: {key} holds {header[key][1]}; expected floating point")
        if labels is not None:
            labels.append(_class_id(label, path, num_classes))

    picks = np.unique(np.linspace(0, len(files) - 1, min(len(files), _DETECT_MAX)).round())
    ends = [_load_ends(files[int(i)], key) for i in picks]
    first, last = np.stack([e[0] for e in ends]), np.stack([e[1] for e in ends])
    order, reason = _resolve_order(order, first, last)
    noise_end = 0 if order == "noise-first" else -1
    sigma, sigma_fields = _noise_scale(sigma_max, first if noise_end == 0 else last)
    if label_shape:
        num_classes = label_shape[0]
    source = {"kind": "npz-folder", "path": str(folder.resolve()), "files": len(files),
              "first_file": files[0].name, "last_file": files[-1].name, "key": key,
              "steps": ref[key][0][0], "order": order, "order_reason": reason, **sigma_fields,
              "labels": None if labels is None else "one-hot" if label_shape else "class id",
              "num_classes": num_classes}

    n = len(files)
    fresh = new_manifest(count=n, shard_size=shard_size, shape=shape,
                         sigma_max=_check_sigma(sigma),
                         seed=None, teacher=_TEACHER,
                         sampler={"method": "unknown", "trajectory_steps": ref[key][0][0]},
                         nfe=None, source=source, config=None)
    writer = _open_checked(out, fresh, IDENTITY_KEYS + ("source",), False, labels is not None)
    if isinstance(writer, PairStore):
        return writer
    with tqdm(total=n, desc="import", unit="pair", disable=not progress) as bar:
        for i in range(num_shards(n, shard_size)):
            start, count = i * shard_size, shard_len(n, shard_size, i)
            arrays = {"noise": np.empty((count, *shape), np.float32),
                      "clean": np.empty((count, *shape), np.float32)}
            for j, path in enumerate(files[start:start + count]):
                ends = _load_ends(path, key)
                arrays["noise"][j], arrays["clean"][j] = ends[noise_end], ends[-1 - noise_end]
                bar.update()
            if labels is not None:
                arrays["label"] = np.asarray(labels[start:start + count], dtype=np.int64)
            writer.write(i, _as_shard(arrays, count, shape, f"shard {i}", out))
    return writer.finish()
