"""The image domain: examples of shape (C, H, W).

Networks are UNets; metrics are Fréchet distance and KID through an extractor, class accuracy
and paired error; plots are sample grids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Images:
    """Examples (C, H, W); batches (B, C, H, W)."""

    shape: tuple[int, ...]
    name = "images"
    block = 256  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------

    # -- evaluation --------------------------------------------------------------------------
