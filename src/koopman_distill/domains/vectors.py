"""The vector domain: examples of shape (D,), any dimension D.

Networks are MLPs; metrics are sliced Wasserstein, energy distance and paired error (against
the teacher and against the user's own data); plots are scatter plots (D = 2) or projections.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Vectors:
    """Examples (D,); batches (B, D)."""

    shape: tuple[int, ...]
    name = "vectors"
    block = 65536  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------

    # -- evaluation --------------------------------------------------------------------------
