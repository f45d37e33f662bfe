"""Offline distillation baselines trained on the same pairs as KDM, sized to KDM's sampling path.

``kd`` (knowledge distillation, Luhman & Luhman 2021): one network regresses the teacher's
sample from its noise, ``x̂_0 = G(x_T / sigma_max, 0, y)``, loss ``dist(x̂_0, x_0)``.

``rectified`` (rectified-flow distillation, Liu et al. 2022, on the teacher's coupling): with
``z = x_T / sigma_max`` and ``x_t = (1 - t) x_0 + t z``, ``t ~ U[0, 1]``, a network learns the
constant velocity ``v(x_t, t, y) ≈ z - x_0`` of the straight path; ``n`` Euler steps from
``t = 1`` to ``0`` give a sample (one step: ``x̂_0 = z - v(z, 1, y)``).

With ``model.w_adv > 0`` either adds KDM's adversarial term (:mod:`.adversarial`): the domain's
critic C, trained as its own objective, and ``w_adv · BCE(C(x̂_0), 1)`` in the loss on the
one-step output x̂_0. For KD that is ``G(x_T / sigma_max, 0, y)``; for rectified flow it is
the straight path's estimate of x_0 from the training point, ``x̂_0 = x_t - t v(x_t, t, y)``,
which at t = 1 is the one-step sample and costs no extra network evaluation (its gradient to
v is scaled by t, so the term acts most at the large-t, one-step end of the path). The critic
is not on the sampling path: it is left out of the parameter count.

The networks are the domain's (:meth:`~..domains.Vectors.student_network`: MLPs for vectors,
UNets for images), conditional on the one-hot label when the pairs are, with the width chosen
so the parameter count is the nearest to that of KDM's sampling path E_T, K, (B,) D built from
the same :class:`~..config.ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ModelConfig
from ..errors import KDMError
from ..training.rng import ExampleRNG
from .base import StudentModule

EVAL_STEPS = (1, 2, 4)  # step counts a rectified flow is evaluated at, besides its own


class KD(StudentModule):
    """Direct regression noise -> clean: ``G(x_T / sigma_max, 0, y)``."""

    def __init__(self, shape: Sequence[int], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0, target_params: int = 0):
        super().__init__(shape, cfg, sigma_max, num_classes)
        self._distance = self.domain.distance(cfg)  # first: LPIPS draws its random init
        self.G = self.domain.student_network(cfg, num_classes, target_params, time_input=False)
        self.add_critic()

    def forward(self, x_T: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (B, *shape) [, labels (B,)] -> samples (B, *shape)."""
        return self.G(x_T / self.sigma_max, 0.0, self.one_hot(labels, len(x_T)))

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """``dist(G(x_T), x_0)`` [+ the adversarial term] on ``{"noise", "clean"[,
        "label"]}``."""
        x_hat = self.G(batch["noise"] / self.sigma_max, 0.0, self.batch_labels(batch))
        loss = self._distance(x_hat, batch["clean"])
        return self.with_adversarial(loss, {
            "push": loss.item(),
            "push_mse": (x_hat.detach() - batch["clean"]).square().mean().item()}, x_hat)


class RectifiedFlow(StudentModule):
    """Velocity ``v(x_t, t, y)`` of the straight path from ``z = x_T / sigma_max`` (t = 1) to
    the teacher's sample x_0 (t = 0); ``forward`` samples in ``cfg.sample_steps`` steps."""

    def __init__(self, shape: Sequence[int], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0, target_params: int = 0):
        if cfg.distance == "lpips":
            raise KDMError("rectified regresses velocities; use model.distance=l2 or "
                           "pseudo_huber")
        if cfg.sample_steps < 1:
            raise KDMError(f"model.sample_steps must be >= 1, got {cfg.sample_steps}")
        super().__init__(shape, cfg, sigma_max, num_classes)
        self._distance = self.domain.distance(cfg)
        self.v = self.domain.student_network(cfg, num_classes, target_params, time_input=True)
        self.add_critic()
        self.sampling_steps = tuple(sorted({*EVAL_STEPS, cfg.sample_steps}))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B, *shape), t (B,), one-hot labels (B, classes) or None -> (B, *shape)."""
        return self.v(x, t, y)

    def sample(self, x_T: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None) -> torch.Tensor:
        """Euler from t = 1 to 0 in ``steps`` (default ``cfg.sample_steps``) uniform steps."""
        steps = self.cfg.sample_steps if steps is None else steps
        if steps < 1:
            raise KDMError(f"rectified flow needs steps >= 1, got {steps}")
        y = self.one_hot(labels, len(x_T))
        x = x_T / self.sigma_max
        for i in range(steps):
            t = torch.full((len(x),), 1.0 - i / steps, dtype=x.dtype, device=x.device)
            x = x - self.velocity(x, t, y) / steps
        return x

    def forward(self, x_T: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (B, *shape) [, labels (B,)] -> samples (B, *shape)."""
        return self.sample(x_T, labels)

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """``dist(v(x_t, t), z - x_0)`` at uniform t [+ the adversarial term on
        ``x_t - t v``] on ``{"noise", "clean"[, "label"]}``."""
        x_0, z = batch["clean"], batch["noise"] / self.sigma_max
        t = rng.rand(len(x_0), device=x_0.device)
        t_b = t.view(-1, *[1] * (x_0.dim() - 1))
        x_t = (1 - t_b) * x_0 + t_b * z
        v = self.velocity(x_t, t, self.batch_labels(batch))
        loss = self._distance(v, z - x_0)
        return self.with_adversarial(loss, {"fm": loss.item()}, x_t - t_b * v)


BASELINES = {"kd": KD, "rectified": RectifiedFlow}
