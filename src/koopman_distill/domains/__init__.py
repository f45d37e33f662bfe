"""Domain plug-ins: everything that depends on what one example is.

A domain is chosen once, from one example's shape, by :func:`domain_for`: ``(D,)`` is
:class:`~.vectors.Vectors` (any dimension D), ``(C, H, W)`` is :class:`~.images.Images`. It
supplies the networks the students are built from, the sampling block size, the metrics,
plots and table columns. No module outside this package asks which modality it is in.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import KDMError
from .images import Images
from .vectors import Vectors

Domain = Vectors | Images


def domain_for(shape: Sequence[int]) -> Domain:
    """The domain of examples of ``shape``: (D,) vectors or (C, H, W) images."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return Vectors(shape)
    if len(shape) == 3:
        return Images(shape)
    raise KDMError(f"examples of shape {shape} are neither vectors (D,) nor images (C, H, W); "
                   "reshape the data to one of those")


__all__ = ["Domain", "Images", "Vectors", "domain_for"]
