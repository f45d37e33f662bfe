"""Per-example random draws that do not depend on how a batch is split.

Every loss takes an :class:`ExampleRNG` argument and draws its per-example noise (latent noise,
diffusion times, noise levels) from it: ``rng.randn_like(x)``, ``rng.randn(n)``,
``rng.rand(n)``. :data:`GLOBAL` draws exactly what ``torch.randn_like``, ``torch.randn`` and
``torch.rand`` draw from torch's global generator, so a single process without gradient
accumulation draws what it always drew. When the trainer splits a global batch of ``total``
rows across processes and micro-batches, it gives each part's loss :func:`batch_part`
``(total, start, stop, generator)`` with the same generator state for every part: each part
draws the noise of all ``total`` rows and keeps rows ``start:stop``, so together the parts see
exactly the noise one process draws for the whole batch.

:class:`GlobalDrawCheck` is how the trainer enforces this: under a split batch a loss that
draws from torch's global generator instead would silently diverge from the single-process
run, so it is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import KDMError


class ExampleRNG:
    """Random draws with one row per example of a batch (rows ``start:stop`` of a ``total``-row
    batch drawn from ``generator``, or, without a generator, torch's global generator)."""

    def __init__(self, total: int = 0, start: int = 0, stop: int = 0,
                 generator: torch.Generator | None = None):
        if generator is not None and not 0 <= start < stop <= total:
            raise ValueError(f"rows {start}:{stop} are not inside a batch of {total}")
        self.total, self.start, self.stop, self.generator = total, start, stop, generator

    def _rows(self, n: int) -> slice:
        if n != self.stop - self.start:
            raise ValueError(f"a draw for {n} rows inside batch part {self.start}:{self.stop}")
        return slice(self.start, self.stop)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x`` (B, ...), row ``i`` belonging to example
        ``i``."""
        if self.generator is None:
            return torch.randn_like(x)
        rows = self._rows(len(x))
        return torch.randn(self.total, *x.shape[1:], generator=self.generator, dtype=x.dtype,
                           device=x.device)[rows]

    def randn(self, n: int, *, device: torch.device | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """``n`` standard normal values (n,), one per example."""
        return self._values(torch.randn, n, device, dtype)

    def rand(self, n: int, *, device: torch.device | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """``n`` uniform values in [0, 1) (n,), one per example."""
        return self._values(torch.rand, n, device, dtype)

    def _values(self, draw, n: int, device: torch.device | None,
                dtype: torch.dtype | None) -> torch.Tensor:
        """``draw`` (torch.randn or torch.rand) of one value per example, (n,)."""
        if self.generator is None:
            return draw(n, device=device, dtype=dtype)
        return draw(self.total, generator=self.generator, device=device,
                    dtype=dtype)[self._rows(n)]


GLOBAL = ExampleRNG()  # the whole batch in one part, from torch's global generator


def batch_part(total: int, start: int, stop: int, generator: torch.Generator) -> ExampleRNG:
    """Draws for rows ``start:stop`` of a ``total``-row batch from ``generator``."""
    return ExampleRNG(total, start, stop, generator)


DROPOUT = nn.modules.dropout._DropoutNd  # nn.Dropout, Dropout1d/2d/3d, AlphaDropout, ...


class GlobalDrawCheck:
    """Raises when code run inside :meth:`watch` draws from torch's global CPU generator (or
    the CUDA one of ``device``), except through ``model``'s dropout modules, whose masks come
    from the global generator by design (they differ between split and whole batches anyway).

    Dropout is followed with forward hooks: the global state must be where the last dropout
    call (or the start) left it whenever a dropout module starts, and at the end.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.cuda = device if device.type == "cuda" else None
        self._expected: list[torch.Tensor] | None = None
        self._touched = False
        for m in model.modules():
            if isinstance(m, DROPOUT) and m.p > 0:
                m.register_forward_pre_hook(self._before)
                m.register_forward_hook(self._after)

    def _state(self) -> list[torch.Tensor]:
        state = [torch.get_rng_state()]
        if self.cuda is not None:
            state.append(torch.cuda.get_rng_state(self.cuda))
        return state

    def _moved(self) -> bool:
        return not all(torch.equal(a, b) for a, b in zip(self._state(), self._expected,
                                                          strict=True))

    def _before(self, module: nn.Module, args: object) -> None:
        if self._expected is not None and self._moved():
            self._touched = True

    def _after(self, module: nn.Module, args: object, out: object) -> None:
        if self._expected is not None:
            self._expected = self._state()

    @contextmanager
    def watch(self, what: str) -> Iterator[None]:
        """Run the body; raise a one-line KDMError naming ``what`` if it drew from the global
        generator outside dropout."""
        self._expected, self._touched = self._state(), False
        try:
            yield
            touched = self._touched or self._moved()
        finally:
            self._expected = None
        if touched:
            raise KDMError(f"{what} drew random numbers from torch's global generator under a "
                           "split batch (train.micro_batch or several processes), so the parts "
                           "would not follow one process; draw per-example noise from the "
                           "loss's rng argument (rng.randn_like, rng.randn, rng.rand)")
