"""Networks and the KDM module."""

from .kdm import KDM
from .koopman import DenseKoopman, EigenKoopman, build_koopman
from .mlp import MLP

__all__ = ["KDM", "DenseKoopman", "EigenKoopman", "build_koopman", "MLP"]
