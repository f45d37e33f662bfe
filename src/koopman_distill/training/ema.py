"""Exponential moving average of a model's parameters."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``ema = decay_t * ema + (1 - decay_t) * params`` after every step.

    With ``warmup`` the rate ramps up as ``decay_t = min(decay, (1 + t) / (10 + t))`` so short
    runs are not dominated by the initial weights. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        t = self.updates
        d = min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay
        torch._foreach_lerp_(list(self.model.parameters()),
                             [p.detach() for p in model.parameters()], 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)
