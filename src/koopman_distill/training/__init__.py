"""The generic trainer shared by teachers, KDM and baselines."""

from .data import TensorBatches
from .trainer import Trainer

__all__ = ["TensorBatches", "Trainer"]
