"""Fixed sinusoidal input features."""

from __future__ import annotations

import math

import torch
from torch import nn


def time_frequencies(n: int) -> torch.Tensor:
    """The n // 2 frequencies ``pi k``, k = 1 .. n // 2, of :func:`time_features`."""
    return math.pi * torch.arange(1, n // 2 + 1, dtype=torch.float32)


def time_features(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``[sin(f t), cos(f t)]``: t (B,), freqs (m,) -> (B, 2m)."""
    a = t[:, None] * freqs
    return torch.cat([a.sin(), a.cos()], dim=1)


class TimeFeatures(nn.Module):
    """Fixed sinusoidal features of t in [0, 1]: (B,) -> (B, n)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("freqs", time_frequencies(n), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return time_features(t, self.freqs)


class FourierFeatures(nn.Module):
    """``[x, sin(f x), cos(f x)]`` for n log-spaced frequencies f in [1, fmax]:
    (B, d) -> (B, d (1 + 2n)); n = 0 is the identity.

    They let a small MLP represent sharp edges of 2-D maps and densities (the checkerboard's
    squares) after far fewer steps than raw coordinates need.
    """

    def __init__(self, d: int, n: int, fmax: float):
        super().__init__()
        freqs = torch.logspace(0, math.log10(fmax), n) if n else torch.zeros(0)
        self.register_buffer("freqs", freqs, persistent=False)
        self.out_dim = d * (1 + 2 * n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (x[:, :, None] * self.freqs).flatten(1)
        return torch.cat([x, a.sin(), a.cos()], dim=1)
