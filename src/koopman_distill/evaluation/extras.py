"""The dataset-extras hook: metrics, table columns, checks and plots that make sense for one
dataset only (the checkerboard's inside rate, far misses and board plots).

Chosen from the data the teacher learned (``cfg.data.source``), never from the example shape:
a 2-D point cloud that is not the checkerboard gets the vector domain's metrics and nothing
else. ``None`` (no extras) for data without any, and for runs whose data is not known
(imported pairs).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .table import Column


class DatasetExtras(Protocol):
    """What a dataset adds to the domain's evaluation. Arrays are (N, *shape) numpy."""

    name: str
    columns: tuple[Column, ...]  # shown before the domain's own
    semantic_name: str  # what :meth:`semantic_labels` labels, e.g. ``square``

    def metrics(self, samples: np.ndarray, target: np.ndarray | None) -> dict[str, float]:
        """Metrics of samples; with ``target`` (the teacher's outputs on the same noise)
        also paired ones."""

    def reference_metrics(self, reference: np.ndarray) -> dict[str, float]:
        """The same metrics of the reference set."""

    def training_metrics(self, samples: np.ndarray) -> dict[str, float]:
        """What the in-training evaluation logs of a student's samples."""

    def quality_check(self, kdm: Mapping[str, Any], kd: Mapping[str, Any]) -> dict[str, Any]:
        """The bench's quality comparison of KDM with KD (one-step rows): the measured
        value, ``quality_target_met`` and ``quality_check`` (one line saying both)."""

    def semantic_labels(self, samples: np.ndarray) -> np.ndarray:
        """A semantic label (N,) int64 per sample, -1 for none (``kdm analyze`` asks whether
        neighbours in the latent share it)."""

    def background(self, ax: Any) -> None:
        """Drawn under every scatter panel of samples (sets the axes' limits)."""

    def caption(self, points: np.ndarray) -> str:
        """A line under a scatter panel's title."""

    def plots(self, out: Path, shown: Mapping[str, tuple[np.ndarray, np.ndarray]],
              target: str | None) -> dict[str, Path]:
        """Extra figures of ``shown`` (name -> (noise, samples)); ``target``: the name of
        the teacher's entry, the one the others are paired with."""


# data.source -> (module, class) of its extras, imported only when asked for
EXTRAS = {"checkerboard": ("koopman_distill.data.checkerboard", "CheckerboardExtras")}


def dataset_extras(source: str | None) -> DatasetExtras | None:
    """The extras of the dataset ``source`` (a ``data.source`` value; None: unknown data)."""
    if source not in EXTRAS:
        return None
    module, name = EXTRAS[source]
    return getattr(importlib.import_module(module), name)()
