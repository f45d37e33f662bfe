"""Per-example random draws that do not depend on how a batch is split.

Losses draw their per-example noise (latent noise, diffusion times, noise levels) through
:func:`randn_like`, :func:`randn` and :func:`rand`. Outside :func:`batch_part` these are exactly
``torch.randn_like``, ``torch.randn`` and ``torch.rand``, so a single process without gradient
accumulation draws what it always drew. When the trainer splits a global batch of ``total``
rows across processes and micro-batches, it runs each part's loss inside
``batch_part(total, start, stop, generator)`` with the same generator state for every part:
each part draws the noise of all ``total`` rows and keeps rows ``start:stop``, so together the
parts see exactly the noise one process draws for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class _Part:
    total: int
    start: int
    stop: int
    generator: torch.Generator


_PART: ContextVar[_Part | None] = ContextVar("batch_part", default=None)


@contextmanager
def batch_part(total: int, start: int, stop: int, generator: torch.Generator) -> Iterator[None]:
    """Draw per-example noise for rows ``start:stop`` of a ``total``-row batch from
    ``generator``."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"rows {start}:{stop} are not inside a batch of {total}")
    token = _PART.set(_Part(total, start, stop, generator))
    try:
        yield
    finally:
        _PART.reset(token)


def _rows(part: _Part, n: int) -> slice:
    if n != part.stop - part.start:
        raise ValueError(f"a draw for {n} rows inside batch part {part.start}:{part.stop}")
    return slice(part.start, part.stop)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (B, ...), row ``i`` belonging to example ``i``."""
    part = _PART.get()
    if part is None:
        return torch.randn_like(x)
    rows = _rows(part, len(x))
    return torch.randn(part.total, *x.shape[1:], generator=part.generator, dtype=x.dtype,
                       device=x.device)[rows]


def randn(n: int, *, device: torch.device | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """``n`` standard normal values (n,), one per example."""
    part = _PART.get()
    if part is None:
        return torch.randn(n, device=device, dtype=dtype)
    rows = _rows(part, n)
    return torch.randn(part.total, generator=part.generator, device=device, dtype=dtype)[rows]


def rand(n: int, *, device: torch.device | None = None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """``n`` uniform values in [0, 1) (n,), one per example."""
    part = _PART.get()
    if part is None:
        return torch.rand(n, device=device, dtype=dtype)
    rows = _rows(part, n)
    return torch.rand(part.total, generator=part.generator, device=device, dtype=dtype)[rows]
