"""Fixed-step deterministic ODE solvers sharing one signature.

``ode_sample(velocity, x, steps, method)`` integrates ``dx/dt = velocity(x, t)`` from ``t0`` to
``t1`` on a uniform grid. ``nfe(method, steps)`` is the number of velocity evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import KDMError

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# velocity evaluations per step
SAMPLERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def nfe(method: str, steps: int) -> int:
    """Number of function evaluations of ``method`` with ``steps`` fixed steps."""
    _check(method, steps)
    return SAMPLERS[method] * steps


def _check(method: str, steps: int) -> None:
    if method not in SAMPLERS:
        raise KDMError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise KDMError(f"sampler steps must be >= 1, got {steps}")


def _step(v: Velocity, x: torch.Tensor, t: float, h: float, method: str) -> torch.Tensor:
    def f(y: torch.Tensor, s: float) -> torch.Tensor:
        return v(y, torch.full((y.shape[0],), s, dtype=y.dtype, device=y.device))

    if method == "euler":
        return x + h * f(x, t)
    if method == "midpoint":
        return x + h * f(x + 0.5 * h * f(x, t), t + 0.5 * h)
    if method == "heun":
        k1 = f(x, t)
        k2 = f(x + h * k1, t + h)
        return x + 0.5 * h * (k1 + k2)
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


@torch.no_grad()
def ode_sample(velocity: Velocity, x: torch.Tensor, steps: int, method: str = "heun",
               t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """Integrate ``x`` (B, ...) from ``t0`` to ``t1`` in ``steps`` uniform steps -> (B, ...)."""
    _check(method, steps)
    h = (t1 - t0) / steps
    for i in range(steps):
        x = _step(velocity, x, t0 + i * h, h, method)
    return x
