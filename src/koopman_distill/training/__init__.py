"""The generic trainer shared by teachers, KDM and baselines."""

from .data import Batches
from .trainer import Trainer

__all__ = ["Batches", "Trainer"]
