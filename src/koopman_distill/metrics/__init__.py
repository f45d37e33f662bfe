"""Sample-quality metrics; the 2-D point-cloud metrics live in :mod:`.twod`."""

from .twod import (
    as_points,
    energy_distance,
    evaluate_2d,
    paired_error,
    random_directions,
    sliced_wasserstein,
)

__all__ = [
    "as_points",
    "energy_distance",
    "evaluate_2d",
    "paired_error",
    "random_directions",
    "sliced_wasserstein",
]
