"""The interfaces the pipeline is built on: what a teacher is, what a sampler is.

Every stage talks to these and nothing else: pair generation asks a :class:`Teacher` for
``sample(noise, labels)``; evaluation and ``kdm bench`` score :data:`Sampler` candidates (the
teacher at k NFE, every student) on the same noise; a domain plug-in (:mod:`.domains`) supplies
the networks, metrics and plots for one example's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

# (noise x_T (B, *shape), int64 labels (B,) or None) -> x_0 (B, *shape), deterministic
Sampler = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@runtime_checkable
class Teacher(Protocol):
    """A model whose deterministic sampler maps noise x_T ~ N(0, sigma_max^2 I) to x_0.

    ``shape`` is one example's shape, ``(D,)`` or ``(C, H, W)``; ``num_classes`` 0 means
    unconditional, otherwise ``sample`` takes int64 class ids (B,). ``steps`` and ``solver``
    default to the teacher's own sampler (the one that makes its pairs); ``nfe`` counts network
    evaluations per sample for those settings. ``identity()`` is what a pair store's manifest
    records about the teacher (``kind``, weights sha256, sampler, NFE): two stores with the same
    identity hold the same kind of pairs. ``spec()`` is a JSON object from which
    :func:`.teachers.load_teacher_spec` rebuilds the teacher later (``{"kind": ...}``; a kind
    with no registered loader can only be passed as an object).
    """

    shape: tuple[int, ...]
    num_classes: int
    sigma_max: float

    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor: ...

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int: ...

    def identity(self) -> dict[str, Any]: ...

    def spec(self) -> dict[str, Any]: ...
