"""The adversarial term: a critic C tells the teacher's samples x_0 (real) from a student's
one-step outputs x̂_0 (fake), as an :class:`~..protocols.Objective` with its own parameters.

- The student adds ``w_adv · BCE(C(x̂_0), 1)`` (non-saturating) to its loss through
  :meth:`Adversarial.generator_loss`, which also keeps ``x̂_0`` (detached) as the fake batch.
- The objective's own loss, which the trainer computes after the student's backward pass and
  steps before the student's update, is ``BCE(C(x_0), 1) + BCE(C(x̂_0), 0)`` on the same batch.

BatchNorm in a critic uses batch statistics in train mode; real and fake batches go through it
in separate calls (as in the reference).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..training.rng import ExampleRNG


class Adversarial:
    """The critic's objective; ``critic`` is a submodule of the student (its ``critic.*``
    parameters), so it is checkpointed with the student."""

    name = "critic"

    def __init__(self, critic: nn.Module):
        self.critic = critic
        self._fake: torch.Tensor | None = None

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.critic.parameters()

    def generator_loss(self, x_hat: torch.Tensor) -> torch.Tensor:
        """``BCE(C(x̂_0), 1)`` for the student's outputs x̂_0 (B, *shape)."""
        logits = self.critic(x_hat)
        self._fake = x_hat.detach()
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The critic's loss: the batch's x_0 are real, the last :meth:`generator_loss`
        outputs fake."""
        real, fake = self.critic(batch["clean"]), self.critic(self._fake)
        l_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        l_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return l_real + l_fake, {"critic_real": l_real.item(), "critic_fake": l_fake.item()}
