"""SiLU multilayer perceptrons: a plain one, and one with the students' ``net(x, t, y)``
convention."""

from __future__ import annotations

import torch
from torch import nn

from .features import time_features, time_frequencies


class MLP(nn.Sequential):
    """``depth`` linear layers of width ``width``, SiLU between them: (B, d_in) -> (B, d_out)."""

    def __init__(self, d_in: int, d_out: int, width: int, depth: int):
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        dims = [d_in] + [width] * (depth - 1) + [d_out]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.SiLU())
        super().__init__(*layers)


class ConditionedMLP(MLP):
    """``net(x, t, y)``: an :class:`MLP` on ``[x, features(t), y]``, (B, d_in) -> (B, d_out).

    ``t`` (a float or (B,)) enters as ``time_features`` sinusoidal features when that is > 0
    and is ignored otherwise; ``y`` is a one-hot (B, num_classes) float tensor when
    ``num_classes`` > 0, else None. With neither, this is the plain MLP on x.
    """

    def __init__(self, d_in: int, d_out: int, width: int, depth: int, num_classes: int = 0,
                 time_features: int = 0):
        super().__init__(d_in + 2 * (time_features // 2) + num_classes, d_out, width, depth)
        self.num_classes = num_classes
        # a buffer, not a TimeFeatures submodule: nn.Sequential would run it as a layer
        self.register_buffer("freqs", time_frequencies(time_features), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float = 0.0,
                y: torch.Tensor | None = None) -> torch.Tensor:
        parts = [x]
        if len(self.freqs):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            parts.append(time_features(t.expand(x.shape[0]) if t.dim() == 0 else t, self.freqs))
        if self.num_classes:
            parts.append(y.to(x.dtype))
        return super().forward(torch.cat(parts, dim=1) if len(parts) > 1 else x)
