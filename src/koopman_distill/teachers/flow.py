"""Flow-matching teacher for vector data (2-D point clouds).

Path (CondOT): ``x_t = (1 - t) x_T + t x_0`` with ``x_T ~ N(0, sigma_max^2 I)`` at ``t = 0`` and
data ``x_0`` at ``t = 1``; the MLP regresses the velocity ``x_0 - x_T``. Sampling integrates the
learned ODE from noise to data with a fixed-step solver from :mod:`.samplers`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TeacherConfig
from ..models.features import FourierFeatures, TimeFeatures
from ..models.mlp import MLP
from ..training.rng import ExampleRNG
from .samplers import nfe, ode_sample


class FlowMatchingTeacher(nn.Module):
    """Velocity field v(x, t) as an MLP on ``[x, fourier(x), features(t)]``; x is (B, dim)."""

    def __init__(self, dim: int, cfg: TeacherConfig):
        super().__init__()
        self.dim, self.cfg = dim, cfg
        self.time = TimeFeatures(cfg.time_features)
        self.fourier = FourierFeatures(dim, cfg.x_features, cfg.x_fmax)
        self.net = MLP(self.fourier.out_dim + 2 * (cfg.time_features // 2), dim, cfg.width,
                       cfg.depth)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, dim), (B,) -> (B, dim)."""
        return self.net(torch.cat([self.fourier(x), self.time(t)], dim=1))

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Conditional flow-matching loss on a batch ``{"x": (B, dim)}`` of data, drawing
        x_T and t from ``rng``."""
        x0 = batch["x"]
        x_T = self.cfg.sigma_max * rng.randn_like(x0)
        t = rng.rand(x0.shape[0], device=x0.device)
        x_t = (1 - t[:, None]) * x_T + t[:, None] * x0
        loss = (self.velocity(x_t, t) - (x0 - x_T)).square().mean()
        return loss, {"fm": loss.item()}

    @property
    def nfe(self) -> int:
        return nfe(self.cfg.sampler, self.cfg.steps)

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, method: str | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Deterministic ODE map noise (B, dim) -> clean (B, dim)."""
        return ode_sample(self.velocity, x_T, steps or self.cfg.steps, method or self.cfg.sampler)
