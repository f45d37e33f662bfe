"""The Koopman Distillation Model, for every domain.

Networks from the domain plug-in (:mod:`..domains`): noise encoder ``E_T``, clean encoder
``E_0`` (both (B, *shape) -> (B, d)), decoder ``D`` ((B, d) -> (B, *shape)); a linear Koopman
operator ``K`` on the latent (:mod:`..models.koopman`); for a class-conditional model the
one-hot label y (B, k) goes into all three networks and a learned control ``B y`` is added
after ``K``. E_T sees ``x_T / sigma_max`` (unit variance) at t = 1, E_0 and D see t = 0.
One-step generation is ``x_0 = D(K E_T(x_T / sigma_max) + B y)``.

Training loss on a pair batch ``(x_T, x_0[, y])``, with latent noise ``σ_z`` (fresh each step;
with ``sigma_z_schedule`` cosine it decays from ``sigma_z`` to 0 over training)::

    z_0 = E_0(x_0),  z_T = E_T(x_T / sigma_max)
    ẑ_0 = K(z_T + σ_z ε_T) + B y                     # pushed latent
    L = w_latent ||ẑ_0 - z_0||²                      # latent alignment
      + w_rec  dist(D(z_0 + σ_z ε_0), x_0)           # reconstruction
      + w_push dist(D(ẑ_0), x_0)                     # push reconstruction (the one-step path)
      + w_inverse L_inv + w_spectrum L_spec          # eigen K only
      + w_adv BCE(C(D(ẑ_0)), 1)                      # with a critic C (w_adv > 0)

``dist`` is the domain's ``model.distance``; the critic C is the domain's and is trained as
an objective of its own (:mod:`.adversarial`).

Unlike the reference, E_T sees unit-variance noise rather than raw std-80 noise, LPIPS weights
stay out of the checkpoints, and K is sized from the actual latent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import ModelConfig
from ..models.koopman import koopman_spec
from ..models.sampling_path import SamplingPath
from ..models.spec import build, spec
from ..training.rng import ExampleRNG
from .base import StudentModule


def latent_noise(cfg: ModelConfig, progress: float) -> float:
    """σ_z at training progress ``progress`` in [0, 1]: ``sigma_z``, or cosine-decayed to 0."""
    if cfg.sigma_z_schedule == "cosine":
        return 0.5 * cfg.sigma_z * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.sigma_z


class KDM(SamplingPath, StudentModule):
    """KDM on examples of ``shape`` ((D,) or (C, R, R)); latents are (B, d)."""

    training_only = ("E_0.", *StudentModule.training_only)
    progress = 0.0  # the fraction of training done, set by the trainer before each step

    def __init__(self, shape: Sequence[int], cfg: ModelConfig, sigma_max: float = 1.0,
                 num_classes: int = 0):
        super().__init__(shape, cfg, sigma_max, num_classes)
        E_T, E_0, D, self.d = self.domain.kdm_networks(cfg, num_classes)
        # the sampling path's networks, as an exported generator rebuilds them
        self.specs = {"E_T": E_T, "D": D, "K": koopman_spec(self.d, cfg),
                      "B": spec("Linear", in_features=num_classes, out_features=self.d)
                      if num_classes else None}
        self.E_T, self.E_0, self.D = build(E_T), build(E_0), build(D)
        self.K = build(self.specs["K"])
        self.B = build(self.specs["B"]) if num_classes else None
        self.add_critic()
        self._distance = self.domain.distance(cfg)  # last: LPIPS draws its random init

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def encode_clean(self, x_0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z_0 = E_0(x_0): (B, *shape) -> (B, d)."""
        return self.E_0(x_0, 0.0, y)

    def forward(self, x_T: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One-step generation: noise (B, *shape) [, labels (B,)] -> samples (B, *shape)."""
        return self.generate(x_T, self.one_hot(labels, len(x_T)))

    # -- training ----------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The KDM loss on ``{"noise": x_T, "clean": x_0[, "label"]}`` (B, *shape)."""
        cfg = self.cfg
        x_T, x_0 = batch["noise"], batch["clean"]
        y = self.batch_labels(batch)
        z_0 = self.encode_clean(x_0, y)
        z_T = self.encode_noise(x_T, y)
        sigma_z = latent_noise(cfg, self.progress)
        z_push = self.koopman(z_T + sigma_z * rng.randn_like(z_T), y)
        x_rec = self.decode(z_0 + sigma_z * rng.randn_like(z_0), y)
        x_push = self.decode(z_push, y)
        terms = {"latent": (z_push - z_0).square().mean(),
                 "rec": self._distance(x_rec, x_0),
                 "push": self._distance(x_push, x_0)}
        weights = {"latent": cfg.w_latent, "rec": cfg.w_rec, "push": cfg.w_push,
                   "inverse": cfg.w_inverse, "spectrum": cfg.w_spectrum}
        terms.update(self.K.aux_losses())
        loss = sum(weights[k] * v for k, v in terms.items())
        loss, logs = self.with_adversarial(loss, {k: v.item() for k, v in terms.items()},
                                           x_push)
        logs["push_mse"] = (x_push.detach() - x_0).square().mean().item()
        return loss, logs
