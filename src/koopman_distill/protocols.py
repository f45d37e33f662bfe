"""The interfaces the pipeline is built on: what a teacher, a student and a sampler are.

Every stage talks to these and nothing else: pair generation asks a :class:`Teacher` for
``sample(noise, labels)``; the trainer trains a :class:`Student` (or a teacher) through its
``loss(batch, rng)`` and its extra :class:`Objective` s; evaluation and ``kdm bench`` score
:data:`Sampler` candidates (the teacher at k NFE, every student at each of its
``sampling_steps``) on the same noise; a domain plug-in (:mod:`.domains`) supplies the networks,
metrics and plots for one example's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from .training.rng import ExampleRNG

# (noise x_T (B, *shape), int64 labels (B,) or None) -> x_0 (B, *shape), deterministic
Sampler = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
# a latent teacher's decoder: latents (B, *shape) -> images (B, C, H, W)
Decoder = Callable[[torch.Tensor], torch.Tensor]
# a training batch: {"noise": x_T (B, *shape), "clean": x_0 (B, *shape)[, "label": (B,)]}
# for students; teachers train on their own keys
Batch = dict[str, torch.Tensor]
Logs = dict[str, float]


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


@runtime_checkable
class Objective(Protocol):
    """A loss with its own parameters and its own optimizer, next to a model's main loss (the
    adversarial critic's, :mod:`.students.adversarial`).

    The trainer computes the model's ``loss`` with these parameters frozen (they get no
    gradient from it); after that loss's backward pass it computes this ``loss`` on the same
    batch and steps this optimizer, then steps the model's: the model's gradient sees these
    parameters as they were before the step. The parameters must be parameters of the model
    (so they are checkpointed, averaged into the EMA and broadcast with it). ``name`` keys the
    optimizer's state in ``state.pt`` (``<name>_optimizer``).
    """

    name: str

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def loss(self, batch: Batch, rng: ExampleRNG) -> tuple[torch.Tensor, Logs]: ...


@runtime_checkable
class Student(Protocol):
    """A model distilled from ``(noise, clean)`` pairs that maps x_T ~ N(0, sigma_max^2 I)
    (B, *shape) to x_0 (B, *shape) in a few network evaluations (:mod:`.students`).

    ``shape``, ``num_classes`` (0 = unconditional; otherwise labels are int64 class ids (B,)),
    ``sigma_max`` as for :class:`Teacher`.

    - ``forward(x_T, labels=None) -> x_0``: the student's own sampler (``sample`` at its
      configured step count), deterministic.
    - ``sample(x_T, labels=None, *, steps=None) -> x_0``: ``steps`` network evaluations, one of
      the student's ``sampling_steps`` or any other count it supports (None: its own; a
      one-step student refuses anything but 1 with a KDMError).
    - ``sampling_steps``: the step counts an evaluation reports for this student, ascending
      (``(1,)`` for KDM and KD; ``(1, 2, 4)`` and ``model.sample_steps`` for rectified flow);
      each step is one network evaluation, so a step count is the sampler's NFE.
    - ``loss(batch, rng) -> (scalar loss, {name: float})`` on a training batch, drawing every
      random number from ``rng`` (:class:`.training.rng.ExampleRNG`): under a split batch a
      draw from torch's global generator is an error.
    - ``objectives()``: extra :class:`Objective` s the trainer steps alongside (empty for most).
    """

    shape: tuple[int, ...]
    num_classes: int
    sigma_max: float
    sampling_steps: tuple[int, ...]

    def forward(self, x_T: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor: ...

    def sample(self, x_T: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None) -> torch.Tensor: ...

    def loss(self, batch: Batch, rng: ExampleRNG) -> tuple[torch.Tensor, Logs]: ...

    def objectives(self) -> Sequence[Objective]: ...
