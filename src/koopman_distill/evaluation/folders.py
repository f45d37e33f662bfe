"""``kdm eval --samples-dir``: a folder of PNGs made by anything, scored with the image
domain's metrics (Fréchet distance and KID on ``eval.extractor`` features, class accuracy when
the folder has ``labels.npy`` and the classifier knows the data).

The reference is, in this order: ``reference`` (a folder of PNGs or a ``.npy`` (N, C, H, W)
in [-1, 1]), the real images of the config's image data (``data.source`` at
``data.resolution``, the same ``eval.n`` images ``kdm eval RUN`` scores a run against), or
only ``eval.reference_stats`` (precomputed mu and sigma; no KID).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.folders import read_labels, read_pngs
from ..domains.images import Images, reference_images
from ..errors import KDMError
from .core import Reference

NO_REFERENCE = ("a folder of PNGs is scored against real images or statistics: give --preset "
                "with image data (e.g. fashion16-cond), --set data.source=SOURCE --set "
                "data.resolution=R, --reference DIR_OR_NPY, or --set "
                "eval.reference_stats=FILE.npz")


def folder_reference(cfg: Config, path: str | Path | None, shape: tuple[int, ...]
                     ) -> Reference:
    """What the samples of ``shape`` (C, H, W) are scored against (see the module)."""
    if path is not None:
        from ..data.arrays import load_array

        values = (read_pngs(path) if Path(path).is_dir()
                  else load_array(path, shape=(None, None, None), what="reference"))
        ref = Reference(values, f"{path}, n={len(values)}")
        advice = "give a reference of the samples' size"
    elif cfg.data.resolution:
        values, name = reference_images(cfg, cfg.eval.n)
        ref = Reference(values, name, data_name=name)
        advice = f"set --set data.resolution={shape[1]} (or data.channels) to match"
    elif cfg.eval.reference_stats:
        return Reference(np.empty((0, *shape), np.float32),
                         f"statistics {cfg.eval.reference_stats}")
    else:
        raise KDMError(NO_REFERENCE)
    if ref.values.shape[1:] != shape:
        raise KDMError(f"the samples are {_size(shape)} but the reference images are "
                       f"{_size(ref.values.shape[1:])}; {advice}")
    return ref


def evaluate_folder(folder: str | Path, cfg: Config, reference: str | Path | None = None
                    ) -> dict[str, Any]:
    """Score the PNGs of ``folder`` (and its ``labels.npy``) with ``cfg.eval``'s settings:
    the result ``kdm eval --samples-dir`` writes."""
    images = read_pngs(folder)
    labels = read_labels(folder, len(images))
    shape = images.shape[1:]
    ref = folder_reference(cfg, reference, shape)
    y = None if labels is None else torch.from_numpy(labels)
    scorer = Images(shape).scorer(cfg, ref, y, torch.device("cpu"))
    metrics = scorer.score(images, None)
    return {"samples_dir": str(Path(folder).resolve()), "n": len(images), "shape": list(shape),
            "labels": labels is not None,
            "settings": {**cfg.eval.__dict__, "reference": ref.name, "data": ref.data_name,
                         "png_values": "8-bit v read as v / 127.5 - 1",
                         **scorer.settings},
            "reference": {"name": ref.name, "n": len(ref.values)},
            "samples": metrics}


def _size(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w} with {c} channel{'s' if c > 1 else ''}"
