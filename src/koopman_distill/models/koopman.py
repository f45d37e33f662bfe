"""Koopman operators K acting on flattened latents z of size d.

- :class:`DenseKoopman`: ``K z = W z (+ b)``.
- :class:`EigenKoopman`: ``K = P Λ P_inv`` with Λ block-diagonal, one 2x2 block
  ``[[a, -b], [b, a]]`` per complex-conjugate eigenvalue pair ``λ = a + ib`` (LRU
  parametrisation ``λ = exp(-exp(ν) + i exp(θ))``, so ``|λ| < 1``). This real block form is
  exactly the operator applied to real latents: its eigenvalues are {λ, conj λ} whenever
  ``P_inv = P^{-1}``, which the inverse-consistency loss enforces on the same P and P_inv the
  forward pass uses. The plotted spectrum is always ``eigvals`` of the applied matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import KDMError


class DenseKoopman(nn.Module):
    """(B, d) -> (B, d): ``z W^T + b``."""

    def __init__(self, d: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(d, d, bias=bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)

    def matrix(self) -> torch.Tensor:
        """The applied linear part, (d, d)."""
        return self.linear.weight

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {}


class EigenKoopman(nn.Module):
    """(B, d) -> (B, d): ``K z = P Λ P_inv z`` with d/2 conjugate eigenvalue pairs."""

    def __init__(self, d: int, r_min: float = 0.0, r_max: float = 1.0,
                 spectrum_target: str = "disk"):
        super().__init__()
        if d % 2:
            raise KDMError(f"the eigen Koopman operator needs an even latent size, got {d}")
        if not 0.0 <= r_min < r_max <= 1.0:
            raise KDMError(f"eigen init needs 0 <= r_min < r_max <= 1, got {r_min}, {r_max}")
        if spectrum_target not in ("disk", "circle"):
            raise KDMError(f"unknown spectrum_target {spectrum_target!r}; use disk or circle")
        m = d // 2
        self.d, self.spectrum_target = d, spectrum_target
        q, _ = torch.linalg.qr(torch.randn(d, d))
        self.P = nn.Parameter(q)
        self.P_inv = nn.Parameter(q.T.clone())
        # LRU ring init: |λ|^2 uniform on [r_min^2, r_max^2], phase uniform on (0, 2π)
        u1, u2 = torch.rand(m), torch.rand(m)
        r2 = u1 * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(r2.clamp_min(1e-12))))
        self.theta_log = nn.Parameter(torch.log(2 * math.pi * u2.clamp_min(1e-6)))

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Re λ and Im λ, (d/2,) each, in real arithmetic (ONNX has no complex tensors)."""
        mod = torch.exp(-torch.exp(self.nu_log))
        phase = torch.exp(self.theta_log)
        return mod * torch.cos(phase), mod * torch.sin(phase)

    def eigenvalues(self) -> torch.Tensor:
        """The parametrised λ, (d/2,) complex (one of each conjugate pair)."""
        return torch.complex(*self._parts())

    def _rotate(self, y: torch.Tensor) -> torch.Tensor:
        a, b = self._parts()
        y = y.unflatten(-1, (-1, 2))
        y0, y1 = y[..., 0], y[..., 1]
        return torch.stack([a * y0 - b * y1, b * y0 + a * y1], dim=-1).flatten(-2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._rotate(z @ self.P_inv.T) @ self.P.T

    def matrix(self) -> torch.Tensor:
        """The applied operator ``P Λ P_inv``, (d, d)."""
        return self(torch.eye(self.d, device=self.P.device)).T

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """``inverse``: ||P_inv P - I||^2 + ||P P_inv - I||^2 (means); ``spectrum``: 1-D
        Wasserstein distance of the moduli and phases of λ to the target distribution."""
        eye = torch.eye(self.d, device=self.P.device)
        inverse = (self.P_inv @ self.P - eye).square().mean() + (
            self.P @ self.P_inv - eye).square().mean()
        lam = self.eigenvalues()
        m = lam.shape[0]
        q = (torch.arange(m, device=lam.device) + 0.5) / m
        r_target = q.sqrt() if self.spectrum_target == "disk" else torch.ones_like(q)
        spectrum = (lam.abs().sort().values - r_target).abs().mean() + (
            torch.remainder(lam.angle(), 2 * math.pi).sort().values - 2 * math.pi * q
        ).abs().mean() / math.pi
        return {"inverse": inverse, "spectrum": spectrum}


def koopman_spec(d: int, cfg: ModelConfig) -> dict[str, Any]:
    """The spec (:mod:`.spec`) of K of kind ``cfg.koopman`` for a latent of size d."""
    if cfg.koopman == "dense":
        return {"cls": "DenseKoopman", "args": {"d": d, "bias": cfg.koopman_bias}}
    if cfg.koopman == "eigen":
        return {"cls": "EigenKoopman", "args": {"d": d, "r_min": cfg.r_min, "r_max": cfg.r_max,
                                                "spectrum_target": cfg.spectrum_target}}
    raise KDMError(f"unknown koopman {cfg.koopman!r}; choose dense or eigen")


def spectra(K: DenseKoopman | EigenKoopman) -> dict[str, np.ndarray]:
    """The eigenvalues to plot (complex, each (d,)): ``K (applied)``, those of the applied
    matrix, and for an eigen K also ``λ (parametrised)`` with their conjugates."""
    out = {"K (applied)": torch.linalg.eigvals(K.matrix().detach().double().cpu()).numpy()}
    if isinstance(K, EigenKoopman):
        lam = K.eigenvalues().detach().cpu().numpy()
        out["λ (parametrised)"] = np.concatenate([lam, lam.conj()])
    return out
