"""The networks students and teachers are built from."""

from .koopman import DenseKoopman, EigenKoopman, koopman_spec
from .mlp import MLP, ConditionedMLP

__all__ = ["ConditionedMLP", "DenseKoopman", "EigenKoopman", "koopman_spec", "MLP"]
