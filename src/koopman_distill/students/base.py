"""What every student shares: its domain, labels, one-step sampling and the optional
adversarial term (a critic C and its objective, :mod:`.adversarial`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..domains import domain_for
from ..errors import KDMError
from ..labels import one_hot
from ..protocols import Logs, Objective
from .adversarial import Adversarial


class StudentModule(nn.Module):
    """Base of the students (see :class:`~..protocols.Student`): examples of ``shape``, noise
    of std ``sigma_max``, ``num_classes`` (0 = unconditional). Subclasses build their networks
    from :attr:`domain` and define ``forward``, ``loss`` and, when they take several steps,
    ``sample`` and :attr:`sampling_steps`."""

    sampling_steps: tuple[int, ...] = (1,)
    # parameter-name prefixes used only in training (not on the sampling path)
    training_only: tuple[str, ...] = ("critic.",)
    adversarial: Adversarial | None = None  # the critic's objective, set by add_critic

    def __init__(self, shape: Sequence[int], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0):
        super().__init__()
        self.domain = domain_for(shape)
        self.shape, self.cfg, self.sigma_max = self.domain.shape, cfg, sigma_max
        self.num_classes = num_classes

    def one_hot(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Checked class ids (n,) -> one-hot (n, num_classes); None when unconditional."""
        return one_hot(labels, n, self.num_classes)

    def batch_labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """One-hot labels of a training batch; a store's labels are ignored by an
        unconditional student."""
        n = len(batch["noise"])
        return self.one_hot(batch.get("label"), n) if self.num_classes else None

    def sample(self, x_T: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None) -> torch.Tensor:
        """One-step sampling; ``steps`` may only be None or 1."""
        if steps not in (None, 1):
            raise KDMError(f"{type(self).__name__} samples in one step; got steps={steps}")
        return self(x_T, labels)

    # -- the adversarial term ----------------------------------------------------------------
    def add_critic(self) -> None:
        """With ``cfg.w_adv > 0``, the domain's critic C (parameters ``critic.*``, training
        only) and its objective. Subclasses call it after building their own networks, so that
        those start from the same weights with and without a critic."""
        self.critic = self.domain.critic(self.cfg) if self.cfg.w_adv > 0 else None
        self.adversarial = Adversarial(self.critic) if self.critic is not None else None

    def with_adversarial(self, loss: torch.Tensor, logs: Logs, x_hat: torch.Tensor
                         ) -> tuple[torch.Tensor, Logs]:
        """``loss + w_adv · BCE(C(x̂_0), 1)`` for the one-step outputs x̂_0 (B, *shape), with
        the term logged as ``adv``; ``loss`` and ``logs`` unchanged without a critic."""
        if self.adversarial is None:
            return loss, logs
        adv = self.adversarial.generator_loss(x_hat)
        return loss + self.cfg.w_adv * adv, {**logs, "adv": adv.item()}

    def objectives(self) -> Sequence[Objective]:
        return () if self.adversarial is None else (self.adversarial,)
