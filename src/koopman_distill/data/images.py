"""Real image data from local files only: sklearn digits, IDX (Fashion-)MNIST, and arrays.

Every loader returns an :class:`ImageData` with images as float32 ``(N, C, R, R)`` in
``[-1, 1]`` (background -1 for the digit sets). Nothing here downloads anything.

Sources accepted by :func:`load_images`:

- ``digits``: scikit-learn ``load_digits()`` (1,797 images, 8x8, values 0..16, 10 classes).
- ``fashion-mnist`` / ``fashion-mnist:DIR``: IDX files (``train-*`` / ``t10k-*``, plain or
  ``.gz``); the default DIR is where Debian's ``dataset-fashion-mnist`` installs them.
- ``mnist:DIR``: the same IDX layout; there is no default directory.
- ``PATH.npy`` (images only) or ``PATH.npz`` (images under ``images``/``x``/``arr_0``, labels
  under ``labels``/``y``/``label``).

Resolution policy (:func:`to_resolution`): a small even growth (at most a quarter of the side,
e.g. 28 -> 32) pads with the background value -1 so no pixel is resampled; other growth is
bilinear; shrinking uses ``mode='area'`` (box averaging over each output pixel's footprint),
which is anti-aliased and preserves the image mean exactly for integer factors.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import KDMError, first_line
from ..io import atomic_write
from ..resources import check_memory

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCE_FORMS = ("digits", "fashion-mnist", "fashion-mnist:DIR", "mnist:DIR", "PATH.npy",
                "PATH.npz")
# The class names of the datasets that have them, by class id
CLASS_NAMES = {"fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")}
IMAGE_KEYS = ("images", "x", "arr_0")
LABEL_KEYS = ("labels", "y", "label")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for RGB -> grey
_RANGE_TOL = 1e-4  # float data may overshoot its nominal range by rounding error

# IDX dtype codes -> big-endian NumPy dtypes
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(f"{d.kind}{d.itemsize}"): c for c, d in _IDX_DTYPES.items()}


@dataclass
class ImageData:
    """A labelled (or unlabelled) image set ready for training.

    Attributes:
        images: float32 ``(N, C, R, R)`` in ``[-1, 1]``.
        labels: int64 ``(N,)`` in ``[0, num_classes)``, or None when unlabelled.
        num_classes: number of classes; 0 when unlabelled.
        source: a human-readable description of where the data came from, for run records.
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int
    source: str

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------------------
# Entry point


def load_images(source: str, resolution: int, channels: int | None = None,
                split: str = "train") -> ImageData:
    """Load a real image set as float32 ``(N, C, resolution, resolution)`` in ``[-1, 1]``.

    Args:
        source: ``digits``, ``fashion-mnist[:DIR]``, ``mnist:DIR``, or a ``.npy``/``.npz`` path.
        resolution: output side R (pad, resize or unchanged; see :func:`to_resolution`).
        channels: 1 or 3 to convert (grey <-> RGB), None to keep the source's.
        split: ``train`` or ``test``. Sources without a test split (digits, array files)
            return their whole set for either, and say so in ``source``.
    """
    if split not in ("train", "test"):
        raise KDMError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) \
            or resolution < 1:
        raise KDMError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise KDMError(f"channels must be 1, 3 or None (keep the source's), got {channels!r}")
    kind, arg = _parse_source(source)
    if kind == "digits":
        images, labels, num_classes, desc = _load_digits(split)
    elif kind in ("mnist", "fashion-mnist"):
        images, labels, num_classes, desc = _load_idx_set(kind, arg, split)
    else:
        images, labels, num_classes, desc = _load_array_file(Path(arg), split)
    native = images.shape[-1]
    if channels is not None:
        images = to_channels(images, channels)
    images = to_resolution(images, int(resolution))
    how = resize_method(native, int(resolution))
    desc += (f", {native}x{native} -> {resolution}x{resolution} ({how}), "
             f"{images.shape[1]} channel(s)")
    return ImageData(images=images, labels=labels, num_classes=num_classes, source=desc)


def image_data(cfg: Config, split: str = "train") -> ImageData:
    """The dataset named by ``cfg.data`` at its resolution; ``data.n`` > 0 keeps a seeded
    subset of that many images (train split only)."""
    d = cfg.data
    data = load_images(d.source, d.resolution, d.channels or None, split)
    if d.conditional and data.labels is None:
        raise KDMError(f"data.conditional is set but {d.source} has no labels; give a "
                       "labelled dataset or set data.conditional=false")
    if split == "train" and 0 < d.n < len(data.images):
        keep = np.sort(np.random.default_rng(d.seed).choice(len(data.images), d.n, False))
        data.images = data.images[keep]
        data.labels = None if data.labels is None else data.labels[keep]
    return data


def class_names(source: str) -> tuple[str, ...] | None:
    """The class names of the image source ``source`` by class id, or None where it has none
    known (digits are named by their ids)."""
    try:
        kind, _ = _parse_source(source)
    except KDMError:  # not an image source
        return None
    return CLASS_NAMES.get(kind)


def _parse_source(source: str) -> tuple[str, str | None]:
    """Split a source string into (kind, argument); kind is digits/mnist/fashion-mnist/file."""
    if not isinstance(source, (str, os.PathLike)):
        raise KDMError(f"image source must be a string, got {type(source).__name__}")
    source = os.fspath(source)
    if source == "digits":
        return "digits", None
    for name in ("fashion-mnist", "mnist"):
        if source == name:
            return name, None
        if source.startswith(name + ":"):
            return name, source[len(name) + 1:]
    if source.lower().endswith((".npy", ".npz")):
        return "file", source
    raise KDMError(f"unknown image source {source!r}; accepted forms: {', '.join(SOURCE_FORMS)}")


# ---------------------------------------------------------------------------------------------
# Sources


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    """scikit-learn's 8x8 digits, values 0..16 mapped to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    labels = digits.target.astype(np.int64)
    desc = f"sklearn load_digits (split={split}: whole set, no separate test split)"
    return images, labels, 10, desc


def _load_idx_set(name: str, directory: str | None,
                  split: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(Fashion-)MNIST from a directory of IDX files; 10 classes."""
    if directory is None:
        if name == "mnist":
            raise KDMError("mnist has no default location; pass the directory holding its IDX "
                           "files as mnist:DIR (e.g. mnist:/data/mnist)")
        directory = str(FASHION_MNIST_DIR)
    root = Path(directory).expanduser()
    if not root.is_dir():
        hint = (" (install it with: apt-get install dataset-fashion-mnist, or pass "
                "fashion-mnist:DIR)" if name == "fashion-mnist" else "")
        raise KDMError(f"{name} directory not found: {root}{hint}")
    prefix = "train" if split == "train" else "t10k"
    image_path = _find_idx(root, prefix, "images", 3)
    label_path = _find_idx(root, prefix, "labels", 1)
    raw = read_idx(image_path)
    labels = read_idx(label_path)
    if labels.ndim != 1:
        raise KDMError(f"{label_path} must hold a 1-D label vector, got shape {labels.shape}")
    images = _normalise(raw, str(image_path))
    labels = _check_labels(labels.astype(np.int64), len(images), str(label_path))
    if labels.max() >= 10:
        raise KDMError(f"{label_path} has label {int(labels.max())}; {name} labels are 0..9")
    return images, labels, 10, f"{name}:{root} split={split}"


def _find_idx(root: Path, prefix: str, kind: str, ndim: int) -> Path:
    """The IDX file for e.g. (train, images): ``train-images-idx3-ubyte[.gz]`` or the dotted
    ``train-images.idx3-ubyte[.gz]`` some mirrors use."""
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise KDMError(f"no {prefix} {kind} file in {root}: expected {names[0]} or {names[0]}.gz")


def _load_array_file(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, int, str]:
    """A ``.npy`` (images only) or ``.npz`` (images and optional labels) file."""
    if not path.is_file():
        raise KDMError(f"image file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        msg = str(e).splitlines()[0] if str(e) else "truncated"
        raise KDMError(f"cannot read {path} as a NumPy array file: {msg}") from None
    labels, num_classes = None, 0
    if isinstance(loaded, np.ndarray):
        raw = loaded
    else:
        with loaded:
            image_key = _first_key(loaded, IMAGE_KEYS)
            if image_key is None:
                found = ", ".join(loaded.files) or "none"
                raise KDMError(f"{path} has no images: expected one of the keys "
                               f"{', '.join(IMAGE_KEYS)}, found {found}")
            raw = _member(loaded, image_key, path)
            label_key = _first_key(loaded, LABEL_KEYS)
            raw_labels = _member(loaded, label_key, path) if label_key is not None else None
        if raw_labels is not None:
            labels, num_classes = _labels_to_int(raw_labels, f"{path}[{label_key}]")
    images = _normalise(raw, str(path))
    if labels is not None:
        labels = _check_labels(labels, len(images), str(path))
    return images, labels, num_classes, f"{path} (split={split}: whole file, no split)"


def _member(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an ``.npz`` archive; an object array (pickles are never loaded), a member
    that is no ``.npy`` array or a damaged archive is a one-line KDMError."""
    try:
        arr = npz[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise KDMError(f"cannot read {key!r} of {path}: {first_line(e)}; store plain numeric "
                       "arrays (np.savez without object arrays)") from None
    if not isinstance(arr, np.ndarray):
        raise KDMError(f"{key!r} of {path} is not a .npy array; store plain numeric arrays "
                       "(np.savez without object arrays)")
    return arr


def _first_key(npz, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in npz.files), None)


# ---------------------------------------------------------------------------------------------
# Validation and normalisation


def _normalise(raw: np.ndarray, what: str) -> np.ndarray:
    """Any accepted layout and value range -> float32 ``(N, C, H, W)`` in [-1, 1]."""
    if raw.dtype == object or not (np.issubdtype(raw.dtype, np.integer)
                                   or np.issubdtype(raw.dtype, np.floating)):
        raise KDMError(f"images in {what} must be numbers, got dtype {raw.dtype}")
    if raw.size == 0:
        raise KDMError(f"images in {what} are empty (shape {raw.shape})")
    check_memory(raw.size * 12, f"images in {what} {raw.shape}", "use fewer or smaller images")
    images = _to_nchw(raw, what)
    images = _to_signed_unit(images, what)
    return np.ascontiguousarray(images, dtype=np.float32)


def _to_nchw(arr: np.ndarray, what: str) -> np.ndarray:
    """(N, R, R), (N, C, R, R) or channels-last (N, R, R, C) -> (N, C, R, R), C in {1, 3}."""
    expected = "expected (N, R, R), (N, C, R, R) or (N, R, R, C) with C 1 or 3"
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise KDMError(f"images in {what} have {arr.ndim} dimensions (shape {arr.shape}); "
                       f"{expected}")
    if arr.shape[1] not in (1, 3):
        raise KDMError(f"images in {what} have shape {arr.shape}; {expected}")
    if arr.shape[2] != arr.shape[3]:
        raise KDMError(f"images in {what} are {arr.shape[2]}x{arr.shape[3]}; only square images "
                       "are supported (crop them first)")
    return arr


def _to_signed_unit(arr: np.ndarray, what: str) -> np.ndarray:
    """Detect the value range from min/max and map it to [-1, 1].

    Integers must lie in 0..255; floats in [0, 1] (mapped 2x - 1) or [-1, 1] (kept). Float data
    with no negative values is taken as [0, 1].
    """
    accepted = "accepted: integers 0..255, floats in [0, 1] or [-1, 1]"
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise KDMError(f"images in {what} have integer values in [{lo}, {hi}]; {accepted}")
        return np.clip(arr.astype(np.float32) * (2.0 / 255.0) - 1.0, -1.0, 1.0)
    arr = arr.astype(np.float32, copy=False)
    _check_finite(arr, what)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= -_RANGE_TOL and hi <= 1 + _RANGE_TOL:
        return np.clip(arr * 2.0 - 1.0, -1.0, 1.0)
    if lo >= -1 - _RANGE_TOL and hi <= 1 + _RANGE_TOL:
        return np.clip(arr, -1.0, 1.0)
    raise KDMError(f"images in {what} have float values in [{lo:.6g}, {hi:.6g}]; {accepted} "
                   "(e.g. divide 0..255 floats by 255)")


def _check_finite(arr: np.ndarray, what: str) -> None:
    """Reject NaN/inf, reporting their count and the first image holding one."""
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count:
        first = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
        raise KDMError(f"images in {what} have {count} NaN/inf values (first in image {first}); "
                       "remove or fix them")


def _labels_to_int(raw: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Integer (N,) labels or one-hot (N, K) -> (int64 (N,), num_classes)."""
    if raw.ndim == 2:
        onehot = np.issubdtype(raw.dtype, np.number) and np.isin(raw, (0, 1)).all() \
            and (raw.sum(axis=1) == 1).all()
        if not onehot:
            raise KDMError(f"labels {what} have shape {raw.shape} but are not one-hot; give "
                           "integer labels (N,) or one-hot rows (N, K)")
        return raw.argmax(axis=1).astype(np.int64), int(raw.shape[1])
    if raw.ndim != 1:
        raise KDMError(f"labels {what} must have shape (N,) or one-hot (N, K), got {raw.shape}")
    if np.issubdtype(raw.dtype, np.floating) and np.isfinite(raw).all() \
            and (raw == np.round(raw)).all():
        raw = raw.astype(np.int64)  # whole-number floats, e.g. saved from a float tensor
    if not np.issubdtype(raw.dtype, np.integer):
        raise KDMError(f"labels {what} must be integers, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    return labels, int(labels.max()) + 1 if labels.size else 0


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels must match the image count and be non-negative."""
    if len(labels) != n:
        raise KDMError(f"{what} has {len(labels)} labels for {n} images; the counts must match")
    if labels.size and labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise KDMError(f"{what} has negative labels (first at index {first}: {labels[first]}); "
                       "labels must be 0..num_classes-1")
    return labels


# ---------------------------------------------------------------------------------------------
# Resolution and channels


def to_resolution(images: np.ndarray, resolution: int) -> np.ndarray:
    """Bring float ``(N, C, H, H)`` images in [-1, 1] to ``(N, C, R, R)``.

    - ``R == H``: returned unchanged.
    - ``R > H`` with ``R - H`` even and at most ``H // 4`` (e.g. 28 -> 32): symmetric padding
      with the background value -1; pixels are not resampled.
    - other ``R > H``: bilinear upsampling (``align_corners=False``).
    - ``R < H``: ``mode='area'`` (each output pixel averages its input footprint), which is
      anti-aliased and keeps the mean for integer factors.
    Non-square inputs raise :class:`KDMError`.
    """
    if images.ndim != 4:
        raise KDMError(f"images must have shape (N, C, H, W), got {images.shape}")
    h, w = images.shape[-2:]
    if h != w:
        raise KDMError(f"images are {h}x{w}; only square images can be resized (crop them first)")
    if resolution < 1:
        raise KDMError(f"resolution must be a positive integer, got {resolution}")
    method = resize_method(h, resolution)
    if method == "unchanged":
        return images
    if method == "pad":
        p = (resolution - h) // 2
        return np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-1.0)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    kwargs = {"align_corners": False} if method == "bilinear" else {}
    out = F.interpolate(x, size=(resolution, resolution), mode=method, **kwargs)
    return out.clamp_(-1.0, 1.0).numpy()


def resize_method(size: int, resolution: int) -> str:
    """How :func:`to_resolution` maps side ``size`` to ``resolution``: ``unchanged``, ``pad``
    (even growth of at most ``size // 4``), ``bilinear`` (other growth) or ``area`` (shrink)."""
    diff = resolution - size
    if diff == 0:
        return "unchanged"
    if 0 < diff <= size // 4 and diff % 2 == 0:
        return "pad"
    return "bilinear" if diff > 0 else "area"


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``(N, C, R, R)`` with C in {1, 3} -> ``(N, channels, R, R)``.

    Grey -> RGB repeats the channel; RGB -> grey takes BT.601 luminance (weights sum to 1, so
    [-1, 1] stays [-1, 1]).
    """
    c = images.shape[1]
    if channels == c:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if c == 3 and channels == 1:
        weights = np.asarray(LUMA, dtype=np.float32).reshape(1, 3, 1, 1)
        return (images * weights).sum(axis=1, keepdims=True, dtype=np.float32)
    raise KDMError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3")


# ---------------------------------------------------------------------------------------------
# IDX format


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip, detected by content) into a native-endian array.

    Layout: two zero bytes, a dtype code (0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per dimension,
    then the data in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise KDMError(f"IDX file not found: {path}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise KDMError(f"IDX file {path} is a corrupt or truncated gzip file ({e})") from None
    if len(data) < 4:
        raise KDMError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than the "
                       "4-byte header")
    if data[0] != 0 or data[1] != 0:
        raise KDMError(f"{path} is not an IDX file: its magic number does not start with two "
                       f"zero bytes (got {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise KDMError(f"IDX file {path} has unknown dtype code 0x{code:02X}; expected one of "
                       + ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES))
    if ndim == 0:
        raise KDMError(f"IDX file {path} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise KDMError(f"IDX file {path} is truncated inside its header ({len(data)} of "
                       f"{header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise KDMError(f"IDX file {path} is {problem}: shape {shape} needs {expected} data bytes, "
                       f"found {found}")
    arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file atomically (:func:`~..io.atomic_write`).

    Supported dtypes: uint8, int8, int16, int32, float32, float64; other integer arrays are
    stored as int32 when their values fit. A path ending in ``.gz`` is gzip-compressed.
    Returns the path written.
    """
    path = Path(path)
    arr = np.asarray(array)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if arr.ndim == 0 or arr.ndim > 255:
        raise KDMError(f"IDX needs 1 to 255 dimensions, got shape {arr.shape}")
    if arr.dtype not in _IDX_CODES and np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(np.int32)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise KDMError(f"values of {arr.dtype} array do not fit IDX int32; cannot write {path}")
        arr = arr.astype(np.int32)
    if arr.dtype not in _IDX_CODES:
        raise KDMError(f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, "
                       "float32 or float64")
    if max(arr.shape) >= 2**32:
        raise KDMError(f"IDX dimensions must be below 2**32, got shape {arr.shape}")
    code = _IDX_CODES[arr.dtype]
    payload = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() \
        + np.ascontiguousarray(arr, arr.dtype.newbyteorder(">")).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))
    return path
