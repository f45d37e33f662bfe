"""What both domains' networks use: parameter counts, sizing a network to a count, and the
elementwise distances."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import KDMError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, *shape) x 2 -> scalar


def param_count(module: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    """Trainable parameters of ``module``, leaving out those whose names start with one of
    ``exclude`` (e.g. ``("E_0.",)``)."""
    return sum(p.numel() for n, p in module.named_parameters()
               if p.requires_grad and not n.startswith(exclude))


def nearest_size(build: Callable[[int], nn.Module], target: int, sizes: Iterable[int]) -> int:
    """The size in ``sizes`` whose module ``build(size)`` has the parameter count nearest
    ``target`` (modules are built on the meta device: no memory, no initialisation cost)."""
    best, best_gap = None, None
    with torch.device("meta"):
        for size in sizes:
            try:
                gap = abs(param_count(build(size)) - target)
            except KDMError:  # e.g. a UNet width its GroupNorm cannot split
                continue
            if best_gap is None or gap < best_gap:
                best, best_gap = size, gap
    if best is None:
        raise KDMError("no baseline network size fits; check the model settings")
    return best


def elementwise_distance(a: torch.Tensor, b: torch.Tensor, kind: str,
                         c: float = 0.03) -> torch.Tensor:
    """Mean elementwise distance: ``l2`` (squared error) or ``pseudo_huber``
    (``sqrt(d^2 + c^2) - c``)."""
    d = a - b
    if kind == "l2":
        return d.square().mean()
    if kind == "pseudo_huber":
        return (torch.sqrt(d.square() + c * c) - c).mean()
    raise KDMError(f"unknown distance {kind!r}; choose l2 or pseudo_huber")

