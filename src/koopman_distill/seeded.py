"""Seeded noise and class labels, drawn as ``kdm sample`` draws them: the same numbers for a
seed whether the samples come at once, in chunks, or from an exported generator."""

from __future__ import annotations

import torch


def block_spans(n: int, block: int, numel: int) -> list[tuple[int, int]]:
    """[start, stop) of ``n`` rows in blocks of ``block`` rows, a last block of fewer than 16
    numbers (``numel`` per row) joined to the one before: torch draws normal numbers 16 at a
    time, so these blocks, drawn in turn from one generator, give the numbers of one draw."""
    stops = [*range(block, n, block), n]
    if len(stops) > 1 and (stops[-1] - stops[-2]) * numel < 16:
        del stops[-2]
    return list(zip([0, *stops[:-1]], stops, strict=True))


def fill_noise(x: torch.Tensor, g: torch.Generator, block: int, sigma_max: float
               ) -> torch.Tensor:
    """Fill ``x`` (rows, *shape) with ``sigma_max`` times the next standard normal numbers of
    ``g``, one block of rows per draw; returns ``x``."""
    numel = x[0].numel() if len(x) else 0
    for i, j in block_spans(len(x), block, numel):
        torch.randn(j - i, *x.shape[1:], generator=g, out=x[i:j])
    return x.mul_(sigma_max)


def seeded_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Uniform class ids (n,) int64 in [0, num_classes) for noise of ``seed``."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, num_classes, (n,), generator=g)


class SeededDraws:
    """``noise`` and ``labels`` of a seed, for a sampler with ``shape``, ``block``,
    ``sigma_max`` and ``num_classes``: what ``kdm sample --seed`` maps."""

    shape: tuple[int, ...]
    block: int
    sigma_max: float
    num_classes: int

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """Seeded ``x_T ~ N(0, sigma_max^2 I)``, (n, *shape)."""
        return fill_noise(torch.empty(n, *self.shape), torch.Generator().manual_seed(seed),
                          self.block, self.sigma_max)

    def labels(self, n: int, seed: int = 0) -> torch.Tensor | None:
        """Uniform class ids (n,) from ``seed`` for a conditional model, else None."""
        return seeded_labels(n, self.num_classes, seed) if self.num_classes else None
