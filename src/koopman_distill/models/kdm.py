"""The Koopman Distillation Model for vector data.

Networks: noise encoder ``E_T``, clean encoder ``E_0``, decoder ``D`` (MLPs) and a linear
Koopman operator ``K`` on the latent. One-step generation is ``x_0 = D(K(E_T(x_T)))``.

Training loss on a pair batch ``(x_T, x_0)`` (latent noise ``σ_z``, fresh each step; with
``sigma_z_schedule`` cosine it decays from ``sigma_z`` to 0 over training)::

    z_0 = E_0(x_0),  z_T = E_T(x_T)
    ẑ_0 = K(z_T + σ_z ε_T)                      # pushed latent
    L = w_latent ||ẑ_0 - z_0||²                   # latent alignment
      + w_rec  dist(D(z_0 + σ_z ε_0), x_0)        # reconstruction
      + w_push dist(D(ẑ_0), x_0)                  # push reconstruction (the one-step path)
      + w_inverse L_inv + w_spectrum L_spec       # eigen K only

The noise input is divided by ``sigma_max`` so E_T always sees unit-variance noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import KDMError
from ..training import rng
from .koopman import build_koopman
from .mlp import MLP


def distance(a: torch.Tensor, b: torch.Tensor, kind: str, c: float = 0.03) -> torch.Tensor:
    """Mean elementwise distance: ``l2`` (squared error) or ``pseudo_huber``
    (``sqrt(d^2 + c^2) - c``)."""
    d = a - b
    if kind == "l2":
        return d.square().mean()
    if kind == "pseudo_huber":
        return (torch.sqrt(d.square() + c * c) - c).mean()
    raise KDMError(f"unknown distance {kind!r}; choose l2 or pseudo_huber")


def latent_noise(cfg: ModelConfig, progress: float) -> float:
    """σ_z at training progress ``progress`` in [0, 1]: ``sigma_z``, or cosine-decayed to 0."""
    if cfg.sigma_z_schedule == "cosine":
        return 0.5 * cfg.sigma_z * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.sigma_z


class TrainingProgress:
    """Mixin: the fraction of training done, which the trainer sets before each step."""

    progress = 0.0

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction


class KDM(TrainingProgress, nn.Module):
    """KDM on vectors: x_T, x_0 are (B, dim); latents are (B, latent_dim)."""

    def __init__(self, dim: int, cfg: ModelConfig, sigma_max: float = 1.0):
        super().__init__()
        if cfg.distance not in ("l2", "pseudo_huber"):
            raise KDMError(f"unknown distance {cfg.distance!r}; choose l2 or pseudo_huber")
        self.dim, self.cfg, self.sigma_max = dim, cfg, sigma_max
        self.E_T = MLP(dim, cfg.latent_dim, cfg.width, cfg.depth)
        self.E_0 = MLP(dim, cfg.latent_dim, cfg.width, cfg.depth)
        self.D = MLP(cfg.latent_dim, dim, cfg.width, cfg.depth)
        self.K = build_koopman(cfg.latent_dim, cfg)

    def push(self, x_T: torch.Tensor) -> torch.Tensor:
        """Pushed latent K(E_T(x_T)): (B, dim) -> (B, latent_dim)."""
        return self.K(self.E_T(x_T / self.sigma_max))

    def forward(self, x_T: torch.Tensor) -> torch.Tensor:
        """One-step generation: noise (B, dim) -> sample (B, dim)."""
        return self.D(self.push(x_T))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The KDM loss on ``{"noise": x_T (B, dim), "clean": x_0 (B, dim)}``."""
        cfg = self.cfg
        x_T, x_0 = batch["noise"], batch["clean"]
        z_0 = self.E_0(x_0)
        z_T = self.E_T(x_T / self.sigma_max)
        sigma_z = latent_noise(cfg, self.progress)
        z_push = self.K(z_T + sigma_z * rng.randn_like(z_T))
        x_rec = self.D(z_0 + sigma_z * rng.randn_like(z_0))
        x_push = self.D(z_push)
        terms = {
            "latent": (z_push - z_0).square().mean(),
            "rec": distance(x_rec, x_0, cfg.distance, cfg.huber_c),
            "push": distance(x_push, x_0, cfg.distance, cfg.huber_c),
        }
        weights = {"latent": cfg.w_latent, "rec": cfg.w_rec, "push": cfg.w_push,
                   "inverse": cfg.w_inverse, "spectrum": cfg.w_spectrum}
        terms.update(self.K.aux_losses())
        loss = sum(weights[k] * v for k, v in terms.items())
        logs = {k: v.item() for k, v in terms.items()}
        logs["push_mse"] = (x_push - x_0).square().mean().item()
        return loss, logs

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x_T ~ N(0, sigma_max^2 I)`` and map it in one step; returns (noise, samples)."""
        x_T = self.sigma_max * torch.randn(n, self.dim, generator=generator)
        return x_T, self(x_T)
