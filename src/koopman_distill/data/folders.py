"""Folders of PNG images: the format external FID tools read and write.

Written: one 8-bit PNG per image, named by its index (``000000.png``, ...), grey for one
channel and RGB for three. Values in [-1, 1] become ``floor(127.5 x + 128)`` clipped to
[0, 255] (EDM's rounding: ``127.5 (x + 1)`` rounded half up), so reading a PNG back gives the
image to within 1/255. A conditional sampler's class ids go to ``labels.npy`` (N,) beside them.

Read: :func:`read_pngs` (a folder of one image size, as a sampler writes it: the scored
samples) and :func:`read_png_folder` (each image brought to one side: examples a user names).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import KDMError, first_line
from .images import to_channels, to_resolution

LABELS = "labels.npy"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as uint8 (N, H, W, C) (NaN becomes 0)."""
    x = np.nan_to_num(np.asarray(images, np.float32), nan=-1.0)
    return np.clip(np.floor(x * 127.5 + 128), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def png_name(index: int, total: int) -> str:
    """``000042.png``: the index zero-padded to 6 digits, or to those of ``total - 1``."""
    return f"{index:0{max(6, len(str(max(total - 1, 0))))}d}.png"


def write_pngs(images: np.ndarray, directory: Path, start: int, total: int) -> None:
    """Images (N, C, H, W) in [-1, 1], C 1 or 3, as PNGs ``start ... start + N - 1`` of a
    folder of ``total``."""
    from PIL import Image

    if images.shape[1] not in (1, 3):
        raise KDMError(f"PNGs hold 1 (grey) or 3 (RGB) channels; these images have "
                       f"{images.shape[1]}")
    for i, img in enumerate(to_uint8(images)):
        pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        pic.save(directory / png_name(start + i, total), format="PNG")


def write_labels(labels: Iterable[int], directory: Path) -> None:
    """Class ids (N,) as ``labels.npy`` (int64) in ``directory``."""
    np.save(directory / LABELS, np.asarray(list(labels), dtype=np.int64))


def read_png(path: Path) -> np.ndarray:
    """One PNG as float32 (C, H, W) in [-1, 1]: grey gives one channel, RGB three (an alpha
    channel is dropped)."""
    import matplotlib.image

    try:
        img = np.asarray(matplotlib.image.imread(path), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as e:
        raise KDMError(f"cannot read {path} as a PNG image ({first_line(e)})") from None
    # imread gives [0, 1]: (H, W) grey, (H, W, 2) grey + alpha, (H, W, 3 or 4) RGB(A)
    img = img[..., None] if img.ndim == 2 else img[..., :1 if img.shape[-1] == 2 else 3]
    return np.moveaxis(img, -1, 0) * 2 - 1


def png_files(directory: str | Path) -> list[Path]:
    """The ``.png`` files of ``directory``, sorted by name; an error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KDMError(f"{directory} is not a folder; give a folder of PNG images")
    files = sorted(directory.glob("*.png"))
    if not files:
        raise KDMError(f"{directory} holds no .png files; give a folder of PNG images or a "
                       ".npy (N, C, H, W)")
    return files


def read_pngs(directory: str | Path) -> np.ndarray:
    """Every PNG of ``directory`` (sorted by name) as float32 (N, C, H, W) in [-1, 1]; all
    must have one size and channel count (grey and RGB are not mixed)."""
    files = png_files(directory)
    images = []
    for f in files:
        x = read_png(f)
        if images and x.shape != images[0].shape:
            raise KDMError(f"{directory} mixes image sizes: {files[0].name} is "
                           f"{_size(images[0].shape)} but {f.name} is {_size(x.shape)}; "
                           "score one size at a time")
        images.append(x)
    return np.stack(images)


def read_labels(directory: str | Path, n: int) -> np.ndarray | None:
    """The class ids (n,) of ``directory/labels.npy``, or None when it has none."""
    from .arrays import load_array

    path = Path(directory) / LABELS
    if not path.exists():
        return None
    labels = load_array(path, what="labels")
    if len(labels) != n:
        raise KDMError(f"{path} holds {len(labels)} labels for {n} PNGs; one per image")
    return labels


def read_png_folder(directory: str | Path, channels: int, resolution: int) -> np.ndarray:
    """The PNGs of ``directory`` (sorted by name) as float32 ``(N, channels, R, R)`` in
    [-1, 1], each converted to ``channels`` and brought to side ``resolution`` as
    :func:`~.images.to_resolution` does."""
    return np.stack([to_resolution(to_channels(read_png(f)[None], channels), resolution)[0]
                     for f in png_files(directory)]).astype(np.float32)


def _size(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w} {'grey' if c == 1 else 'RGB'}"
