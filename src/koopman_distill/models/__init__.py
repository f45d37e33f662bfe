"""The networks students and teachers are built from."""

from .koopman import DenseKoopman, EigenKoopman, build_koopman
from .mlp import MLP, ConditionedMLP

__all__ = ["ConditionedMLP", "DenseKoopman", "EigenKoopman", "build_koopman", "MLP"]
