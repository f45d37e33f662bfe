"""Koopman operators and the KDM loss."""

import math

import pytest
import torch

from koopman_distill.config import ModelConfig
from koopman_distill.domains.common import elementwise_distance as distance
from koopman_distill.errors import KDMError
from koopman_distill.models import DenseKoopman, EigenKoopman
from koopman_distill.students import KDM, latent_noise
from koopman_distill.training.rng import GLOBAL


def test_dense_matrix_and_bias():
    torch.manual_seed(0)
    K = DenseKoopman(6, bias=True)
    z = torch.randn(4, 6)
    assert torch.allclose(K(z), z @ K.matrix().T + K.linear.bias, atol=1e-6)
    assert DenseKoopman(6, bias=False).linear.bias is None


def test_eigen_applied_operator_has_parametrised_spectrum():
    torch.manual_seed(0)
    K = EigenKoopman(8)
    z = torch.randn(5, 8)
    A = K.matrix()
    assert torch.allclose(K(z), z @ A.T, atol=1e-5)
    lam = K.eigenvalues().detach()
    assert (lam.abs() < 1).all()
    expected = torch.cat([lam, lam.conj()]).to(torch.complex128)
    got = torch.linalg.eigvals(A.detach().double())
    # each parametrised eigenvalue appears in the applied operator's spectrum
    dist = (expected[:, None] - got[None, :]).abs().min(dim=1).values
    assert dist.max() < 1e-4
    losses = K.aux_losses()
    assert losses["inverse"].item() < 1e-10  # P_inv = P^-1 at initialisation


def test_eigen_inverse_loss_measures_the_applied_pair():
    torch.manual_seed(0)
    K = EigenKoopman(4)
    with torch.no_grad():
        K.P_inv.mul_(2.0)  # P_inv P = 2 I
    assert K.aux_losses()["inverse"].item() == pytest.approx(2 * 1.0 / 4, rel=1e-5)


def test_eigen_ring_init_and_spectrum_loss():
    torch.manual_seed(0)
    K = EigenKoopman(2000, r_min=0.5, r_max=0.9)
    r = K.eigenvalues().abs()
    assert r.min() >= 0.5 - 1e-5 and r.max() <= 0.9 + 1e-5
    # |λ|^2 uniform on [0.25, 0.81]: median radius sqrt(0.53)
    assert r.median().item() == pytest.approx(math.sqrt(0.53), abs=0.02)
    loss = K.aux_losses()["spectrum"]
    loss.backward()
    assert K.nu_log.grad.abs().sum() > 0 and K.theta_log.grad.abs().sum() > 0


def test_eigen_needs_even_size():
    with pytest.raises(KDMError, match="even latent size"):
        EigenKoopman(7)


def test_distances():
    a, b = torch.zeros(10), torch.full((10,), 0.5)
    assert distance(a, b, "l2").item() == pytest.approx(0.25)
    c = 0.03
    assert distance(a, b, "pseudo_huber", c).item() == pytest.approx(math.sqrt(0.25 + c * c) - c)
    with pytest.raises(KDMError, match="unknown distance"):
        distance(a, b, "l3")


@pytest.mark.parametrize("koopman", ["dense", "eigen"])
def test_kdm_learns_a_linear_teacher(koopman):
    """x_0 = M x_T + b is learned to small one-step error in a few hundred steps."""
    torch.manual_seed(0)
    M = torch.tensor([[0.8, -0.6], [0.5, 1.1]])
    b = torch.tensor([0.3, -0.2])
    cfg = ModelConfig(width=64, depth=3, latent_dim=16, koopman=koopman, sigma_z=0.05)
    model = KDM((2,), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        x_T = torch.randn(256, 2)
        loss, logs = model.loss({"noise": x_T, "clean": x_T @ M.T + b}, GLOBAL)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) >= {"latent", "rec", "push", "push_mse"}
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = (model(x_T) - (x_T @ M.T + b)).square().mean().item()
    assert err < 0.02  # the target's variance is ~1.2 per coordinate


def test_kdm_sees_unit_variance_noise():
    """E_T reads x_T / sigma_max: the same map for any noise scale."""
    torch.manual_seed(0)
    small = KDM((2,), ModelConfig(width=8, depth=2, latent_dim=4), sigma_max=1.0)
    big = KDM((2,), ModelConfig(width=8, depth=2, latent_dim=4), sigma_max=80.0)
    big.load_state_dict(small.state_dict())
    x_T = torch.randn(16, 2)
    with torch.no_grad():
        torch.testing.assert_close(big(80.0 * x_T), small(x_T), rtol=1e-6, atol=1e-6)
        assert big.sample(80.0 * x_T, steps=1).shape == (16, 2)
    with pytest.raises(KDMError, match="samples in one step; got steps=2"):
        big.sample(x_T, steps=2)


def test_latent_noise_schedule():
    constant = ModelConfig(sigma_z=0.4)
    assert [latent_noise(constant, t) for t in (0.0, 0.5, 1.0)] == [0.4, 0.4, 0.4]
    cosine = ModelConfig(sigma_z=0.4, sigma_z_schedule="cosine")
    got = [latent_noise(cosine, t) for t in (0.0, 0.25, 0.5, 1.0)]
    assert got == pytest.approx([0.4, 0.2 * (1 + math.sqrt(0.5)), 0.2, 0.0], abs=1e-12)
    model = KDM((2,), cosine)
    batch = {"noise": torch.randn(32, 2), "clean": torch.randn(32, 2)}
    model.set_progress(1.0)  # no latent noise left: the loss is deterministic
    assert model.loss(batch, GLOBAL)[0] == model.loss(batch, GLOBAL)[0]
    model.set_progress(0.0)
    assert model.loss(batch, GLOBAL)[0] != model.loss(batch, GLOBAL)[0]
