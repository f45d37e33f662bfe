"""What every student shares: its domain, labels, and one-step sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..domains import domain_for
from ..errors import KDMError
from ..labels import one_hot
from ..protocols import Objective


class StudentModule(nn.Module):
    """Base of the students (see :class:`~..protocols.Student`): examples of ``shape``, noise
    of std ``sigma_max``, ``num_classes`` (0 = unconditional). Subclasses build their networks
    from :attr:`domain` and define ``forward``, ``loss`` and, when they take several steps,
    ``sample`` and :attr:`sampling_steps`."""

    sampling_steps: tuple[int, ...] = (1,)
    # parameter-name prefixes used only in training (not on the sampling path)
    training_only: tuple[str, ...] = ()

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

    def objectives(self) -> Sequence[Objective]:
        return ()
