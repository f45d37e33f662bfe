"""DCGAN-style patch discriminator (KDM reference §3.6).

``n_layers`` convs (kernel 4, stride 2, pad 1; widths C, 2C, 4C, ...) with LeakyReLU(0.2) and
BatchNorm after all but the first, then a kernel-4 stride-1 unpadded conv to one logit map,
flattened. Each stride-2 conv halves the side (``R -> R // 2``), so the final conv sees
``R // 2**n_layers >= 4`` pixels and gives ``(R // 2**n_layers - 3)**2`` patch logits: one at
32x32, 25 at 64x64 (with the default three layers).

BatchNorm uses batch statistics while the module is in train mode; the reference keeps it in
train mode and sends real and fake batches through in separate calls.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import KDMError


def _default_layers(resolution: int) -> int:
    """Most stride-2 layers, up to 3, that leave at least 4x4 pixels for the final conv."""
    n = 0
    while n < 3 and resolution >> (n + 1) >= 4:
        n += 1
    return n


class PatchDiscriminator(nn.Module):
    """``(B, in_channels, R, R) -> (B, n_logits)`` real/fake logits, one per patch.

    Args:
        in_channels: image channels.
        resolution: image side R (>= 8).
        channels: width C of the first conv; layer i has ``C * 2**i`` channels.
        n_layers: number of stride-2 convs; default 3 for R >= 32, 2 for R 16..31, 1 for R 8..15.
    """

    def __init__(self, in_channels: int, resolution: int, channels: int = 64,
                 n_layers: int | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("resolution", resolution),
                        ("channels", channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise KDMError(f"PatchDiscriminator: {name} must be an integer >= 1, got {v!r}")
        if resolution < 8:
            raise KDMError(f"PatchDiscriminator: resolution {resolution} is too small; it needs "
                           f"images of at least 8x8 (one stride-2 conv, then a 4x4 conv)")
        if n_layers is None:
            n_layers = _default_layers(resolution)
        if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
            raise KDMError(f"PatchDiscriminator: n_layers must be an integer >= 1, got "
                           f"{n_layers!r}")
        if resolution >> n_layers < 4:
            raise KDMError(f"PatchDiscriminator: {n_layers} stride-2 layers shrink {resolution}px "
                           f"to {resolution >> n_layers}px, below the 4px the final conv needs; "
                           f"use n_layers <= {_default_layers(resolution)} or leave it unset")
        self.in_channels, self.resolution, self.n_layers = in_channels, resolution, n_layers
        side = resolution >> n_layers
        self.n_logits = (side - 3) ** 2

        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(n_layers):
            c_out = channels * 2 ** i
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        layers += [nn.Conv2d(c_in, 1, 4, stride=1, padding=0), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, in_channels, R, R) -> (B, n_logits)``."""
        R = self.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, R, R):
            raise KDMError(f"PatchDiscriminator: expected input of shape "
                           f"(B, {self.in_channels}, {R}, {R}), got {tuple(x.shape)}")
        return self.net(x)
