"""A plain SiLU multilayer perceptron."""

from __future__ import annotations

from torch import nn


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
