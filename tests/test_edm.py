"""EDM pieces against closed-form answers for Gaussian data N(mu, s^2 I).

For such data the exact denoiser is ``D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and
the probability-flow ODE has the exact solution
``x(sigma) - mu = (x(sigma_max) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2)``.
"""

import math

import pytest
import torch
from torch import nn

from koopman_distill.errors import KDMError
from koopman_distill.teachers.edm import (
    EDMPrecond,
    EDMTeacher,
    edm_loss,
    heun_nfe,
    heun_sample,
    karras_sigmas,
)

MU, S, SIGMA_MAX = 0.3, 0.5, 80.0


def gaussian_denoiser(x, sigma, labels=None):
    return MU + S**2 / (S**2 + sigma.view(-1, *[1] * (x.ndim - 1)) ** 2) * (x - MU)


class GaussianF(nn.Module):
    """The raw network F that makes EDMPrecond the exact Gaussian denoiser:
    ``F = (D(x) - c_skip x) / c_out`` with ``x = y / c_in`` and ``sigma = exp(4 t)``."""

    def forward(self, y, t, labels):
        sigma = (4 * t).exp()
        s = sigma.view(-1, *[1] * (y.ndim - 1))
        r = (s**2 + S**2).sqrt()
        x = y * r
        c_skip, c_out = S**2 / r**2, s * S / r
        return (gaussian_denoiser(x, sigma) - c_skip * x) / c_out


def heun_rel_error(steps):
    """Relative error of x_0 - mu from heun_sample with the exact denoiser (float64)."""
    x_T = MU + SIGMA_MAX * torch.tensor([[[[1.0, -2.0]]]], dtype=torch.float64)
    exact = (x_T - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)
    out = heun_sample(gaussian_denoiser, x_T, karras_sigmas(steps, sigma_max=SIGMA_MAX))
    return ((out - MU - exact).abs() / exact.abs()).max().item()


def test_heun_matches_exact_ode_solution():
    # Measured: 5.53e-2 (18 steps), 1.22e-2 (36), 2.87e-3 (72), 6.91e-4 (144). All of it is
    # discretisation error, concentrated where sigma ~ s; the final Euler step to 0 adds only
    # sigma_min^2 / (2 s^2) = 8e-6.
    e18, e36, e72, e144 = (heun_rel_error(n) for n in (18, 36, 72, 144))
    assert e18 == pytest.approx(5.53e-2, rel=0.01)
    assert e144 < 1e-3
    # second order: halving the step (in sigma^(1/rho)) quarters the error
    for coarse, fine in ((e18, e36), (e36, e72), (e72, e144)):
        assert math.log2(coarse / fine) == pytest.approx(2.0, abs=0.25)


def test_heun_nfe_counts_denoiser_calls():
    calls = []

    def counting(x, sigma, labels):
        calls.append(sigma[0].item())
        return gaussian_denoiser(x, sigma)

    heun_sample(counting, torch.randn(2, 1, 2, 2) * SIGMA_MAX, karras_sigmas(18))
    assert len(calls) == heun_nfe(18) == 35
    assert 0.0 not in calls  # the last step is Euler: the denoiser never sees sigma = 0
    with pytest.raises(KDMError, match="1-D"):
        heun_sample(counting, torch.zeros(1, 1), torch.tensor([1.0]))


def test_karras_sigmas():
    sig = karras_sigmas(18)
    assert sig.shape == (19,) and sig.dtype == torch.float64
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.002)
    assert sig[-1].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    # rho = 1 is uniform spacing in sigma
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, rho=1.0),
                          torch.tensor([5.0, 4, 3, 2, 1, 0], dtype=torch.float64))
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(KDMError, match="steps"):
        karras_sigmas(0)
    with pytest.raises(KDMError, match="sigma_min"):
        karras_sigmas(4, sigma_min=1.0, sigma_max=0.5)


class Recorder(nn.Module):
    """F that returns zeros and remembers its inputs."""

    def forward(self, x, t, labels):
        self.seen = (x, t, labels)
        return torch.zeros_like(x)


def test_precond_coefficients():
    pre = EDMPrecond(Recorder(), sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = pre.coefficients(torch.tensor([0.5, 80.0, 1e-3]))
    assert torch.allclose(c_skip, torch.tensor([0.5, 0.25 / 6400.25, 0.25 / 0.250001]))
    assert torch.allclose(c_out, torch.tensor([0.5**0.5 / 2, 40 / 6400.25**0.5,
                                               5e-4 / 0.250001**0.5]))
    assert torch.allclose(c_in, torch.tensor([2**0.5, 1 / 6400.25**0.5, 1 / 0.250001**0.5]))
    assert torch.allclose(c_noise, torch.tensor([math.log(0.5), math.log(80), math.log(1e-3)]) / 4)

    # with F = 0 the denoiser is c_skip x; F sees c_in x, c_noise and the labels unchanged
    x, labels = torch.randn(2, 3, 4, 4), torch.eye(2)
    out = pre(x, torch.tensor([0.5, 80.0]), labels)
    assert torch.allclose(out, x * torch.tensor([0.5, 0.25 / 6400.25]).view(2, 1, 1, 1))
    seen_x, seen_t, seen_labels = pre.net.seen
    assert torch.allclose(seen_x[0], x[0] * 2**0.5) and seen_labels is labels
    assert torch.allclose(seen_t, torch.tensor([math.log(0.5), math.log(80)]) / 4)
    assert torch.allclose(pre(x, 0.5), 0.5 * x)  # scalar sigma broadcasts
    with pytest.raises(KDMError, match="sigma"):
        pre(x, torch.ones(3))


def test_precond_with_exact_f_is_exact_denoiser():
    x, sigma = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.tensor([0.01, 0.5, 3.0, 80.0])
    got = EDMPrecond(GaussianF())(x, sigma.double())
    assert torch.allclose(got, gaussian_denoiser(x, sigma.double()))


def test_edm_loss_minimum_for_exact_denoiser():
    # With data variance s^2 = sigma_data^2 the weighted posterior variance
    # lambda(sigma) s^2 sigma^2 / (s^2 + sigma^2) is exactly 1 at every sigma: E[loss] = 1.
    torch.manual_seed(0)
    x0 = MU + S * torch.randn(2048, 1, 4, 4, dtype=torch.float64)
    exact = edm_loss(EDMPrecond(GaussianF()), x0)
    zero_f = edm_loss(EDMPrecond(Recorder()), x0)
    shifted = edm_loss(lambda x, s, labels: gaussian_denoiser(x, s) + 0.1, x0)
    assert torch.isfinite(exact) and exact.item() == pytest.approx(1.0, abs=0.04)
    assert zero_f.item() > 1.1 and shifted.item() > 1.1
    # F = 0 (D = c_skip x) is itself the exact denoiser for zero-mean data of variance sigma_data^2
    assert edm_loss(EDMPrecond(Recorder()), x0 - MU).item() == pytest.approx(1.0, abs=0.04)


class TinyNet(nn.Module):
    """Conv net F(x, t, labels) with t and one-hot labels fed as constant channels."""

    def __init__(self, channels, num_classes=0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels + 1 + num_classes, 8, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(8, channels, 3, padding=1))

    def forward(self, x, t, labels):
        extra = [t.view(-1, 1, 1, 1)] + ([] if labels is None else [labels[:, :, None, None]])
        extra = torch.cat(extra, 1).expand(-1, -1, *x.shape[2:])
        return self.body(torch.cat([x, extra], 1))


def fixed_loss(teacher, batch):
    torch.manual_seed(123)
    with torch.no_grad():
        return teacher.loss(batch)[0].item()


@pytest.mark.parametrize("num_classes", [0, 3])
def test_teacher_trains_and_samples(num_classes):
    torch.manual_seed(0)
    teacher = EDMTeacher(TinyNet(2, num_classes), num_classes=num_classes)
    grid = torch.linspace(-1, 1, 8)
    image = torch.stack([grid.view(1, 8).expand(8, 8), grid.view(8, 1).expand(8, 8)])
    batch = {"image": image.expand(16, -1, -1, -1).clone(), "label": torch.arange(16) % 3}
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    before = fixed_loss(teacher, batch)
    for _ in range(30):
        loss, logs = teacher.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"edm"} and logs["edm"] == pytest.approx(loss.item())
    assert fixed_loss(teacher, batch) < 0.8 * before

    noise = 80.0 * torch.randn(5, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1]) if num_classes else None
    out = teacher.sample(noise, labels, steps=4)
    assert out.shape == (5, 2, 8, 8) and torch.isfinite(out).all() and not out.requires_grad
    assert torch.equal(out, teacher.sample(noise, labels, steps=4))  # deterministic
    assert teacher.nfe == 35


def test_teacher_label_errors():
    cond = EDMTeacher(TinyNet(1, 3), num_classes=3)
    image = torch.zeros(2, 1, 8, 8)
    with pytest.raises(KDMError, match="labels are required"):
        cond.loss({"image": image})
    with pytest.raises(KDMError, match=r"shape \(2,\)"):
        cond.loss({"image": image, "label": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(KDMError, match="integer"):
        cond.sample(image, torch.zeros(2))
    with pytest.raises(KDMError, match=r"\[0, 3\)"):
        cond.sample(image, torch.tensor([0, 3]), steps=2)
    uncond = EDMTeacher(TinyNet(1))
    with pytest.raises(KDMError, match="unconditional"):
        uncond.sample(image, torch.tensor([0, 1]))
    uncond.loss({"image": image, "label": torch.tensor([0, 1])})  # data labels are ignored
    with pytest.raises(KDMError, match=r"\(B, C, R, R\)"):
        uncond.loss({"image": torch.zeros(2, 64)})
    with pytest.raises(KDMError, match="num_classes"):
        EDMTeacher(TinyNet(1), num_classes=-1)


def test_euler_is_first_order_with_one_call_per_step():
    calls = []

    def counting(x, sigma, labels=None):
        calls.append(1)
        return gaussian_denoiser(x, sigma)

    x_T = MU + SIGMA_MAX * torch.tensor([[[[1.0, -2.0]]]], dtype=torch.float64)
    exact = (x_T - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)
    errors = []
    for steps in (36, 72, 144):
        calls.clear()
        out = heun_sample(counting, x_T, karras_sigmas(steps, sigma_max=SIGMA_MAX),
                          second_order=False)
        assert len(calls) == steps
        errors.append(((out - MU - exact).abs() / exact.abs()).max().item())
    # first order: halving the step halves the error (ratios measured 1.9-2.0)
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 1.7 < coarse / fine < 2.3
    assert errors[-1] > heun_rel_error(144)  # Heun is the more accurate at equal steps
