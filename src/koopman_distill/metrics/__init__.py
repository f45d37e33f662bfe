"""Sample-quality metrics: vectors of any dimension in :mod:`.vectors`, images (Fréchet
distance, KID on extractor features) in :mod:`.images` and :mod:`.extractors`."""

from .vectors import (
    as_points,
    distribution_metrics,
    energy_distance,
    evaluate_vectors,
    paired_error,
    random_directions,
    sliced_wasserstein,
)

__all__ = [
    "as_points",
    "distribution_metrics",
    "energy_distance",
    "evaluate_vectors",
    "paired_error",
    "random_directions",
    "sliced_wasserstein",
]
