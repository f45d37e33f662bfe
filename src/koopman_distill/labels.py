"""The one check of class labels: int64 class ids (n,) in [0, num_classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import KDMError


def check_labels(labels: Any, n: int, num_classes: int) -> torch.Tensor | None:
    """Class ids for ``n`` examples of a model with ``num_classes`` classes (0 =
    unconditional): int64 (n,) on the labels' device, or None for an unconditional model; a
    one-line KDMError for anything else. ``labels`` is a tensor or anything NumPy reads."""
    if not num_classes:
        if labels is not None:
            raise KDMError("this model is unconditional; do not pass labels")
        return None
    if labels is None:
        raise KDMError(f"this model is class-conditional ({num_classes} classes); pass labels "
                       "(e.g. --labels FILE.npy or --class K)")
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if (tuple(y.shape) != (n,) or y.dtype.is_floating_point or y.dtype.is_complex
            or y.dtype == torch.bool):
        raise KDMError(f"labels must be {n} integer class ids, got {y.dtype} "
                       f"{tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise KDMError(f"labels must lie in [0, {num_classes}), got values from {int(y.min())} "
                       f"to {int(y.max())}")
    return y.long()


def one_hot(labels: Any, n: int, num_classes: int) -> torch.Tensor | None:
    """:func:`check_labels`, then one-hot float32 (n, num_classes); None when unconditional."""
    y = check_labels(labels, n, num_classes)
    return None if y is None else F.one_hot(y, num_classes).float()
