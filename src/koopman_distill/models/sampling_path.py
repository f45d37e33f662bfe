"""KDM's one-step sampling path ``x_0 = D(K E_T(x_T / sigma_max) + B y)``, shared by the
trained student (:class:`~..students.kdm.KDM`) and the exported generator
(:mod:`..export`)."""

from __future__ import annotations

import torch


class SamplingPath:
    """A mixin for a module with networks ``E_T`` ((B, *shape) -> (B, d)), ``K`` ((B, d) ->
    (B, d)), ``D`` ((B, d) -> (B, *shape)), a control ``B`` ((B, k) -> (B, d); None when
    unconditional) and the noise scale ``sigma_max``. ``y`` is one-hot (B, k) float or None."""

    def encode_noise(self, x_T: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z_T = E_T(x_T / sigma_max) at t = 1: (B, *shape) -> (B, d)."""
        return self.E_T(x_T / self.sigma_max, 1.0, y)

    def koopman(self, z_T: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Pushed latent K z_T (+ B y): (B, d) -> (B, d)."""
        z = self.K(z_T)
        return z + self.B(y) if self.B is not None else z

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x = D(z) at t = 0: (B, d) -> (B, *shape)."""
        return self.D(z, 0.0, y)

    def generate(self, x_T: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One step: noise (B, *shape) [, one-hot y (B, k)] -> samples (B, *shape)."""
        return self.decode(self.koopman(self.encode_noise(x_T, y), y), y)
