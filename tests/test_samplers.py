"""ODE samplers against the closed-form linear ODE dx/dt = a x, x(1) = x(0) e^a."""

import math

import pytest
import torch

from koopman_distill.errors import KDMError
from koopman_distill.teachers import SAMPLERS, nfe, ode_sample

A = -1.3


def linear(x, t):
    return A * x


def error(method, steps):
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x1 = ode_sample(linear, x0, steps, method)
    return (x1 - x0 * math.exp(A)).abs().max().item()


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_convergence_order(method, order):
    e1, e2 = error(method, 16), error(method, 32)
    assert math.log2(e1 / e2) == pytest.approx(order, abs=0.15)


def test_accuracy_and_nfe():
    assert error("heun", 50) < 1e-4
    assert error("rk4", 10) < 5e-6
    assert [nfe(m, 10) for m in ("euler", "midpoint", "heun", "rk4")] == [10, 20, 20, 40]
    assert set(SAMPLERS) == {"euler", "midpoint", "heun", "rk4"}


def test_time_argument_is_passed():
    # dx/dt = 2t integrates to x(1) - x(0) = 1 exactly for second-order methods
    out = ode_sample(lambda x, t: 2 * t[:, None].expand_as(x), torch.zeros(3, 2), 5, "heun")
    assert torch.allclose(out, torch.ones(3, 2), atol=1e-6)


def test_bad_sampler():
    with pytest.raises(KDMError, match="unknown sampler 'rk5'"):
        nfe("rk5", 3)
    with pytest.raises(KDMError, match="steps must be >= 1"):
        ode_sample(linear, torch.zeros(1, 2), 0, "euler")
