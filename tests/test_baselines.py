"""The offline baselines: sizing against KDM's sampling path, the rectified-flow conventions
(exact on straight paths), training on a closed-form map, conditioning in every domain, and
dispatch by ``model.method``."""

import dataclasses

import pytest
import torch

from koopman_distill.api import build_kdm
from koopman_distill.config import ModelConfig, UNetConfig, preset
from koopman_distill.errors import KDMError
from koopman_distill.students import (
    KD,
    KDM,
    RectifiedFlow,
    build_student,
    param_count,
    sampling_path_params,
)
from koopman_distill.training.rng import GLOBAL

SMALL = ModelConfig(width=32, depth=3, latent_dim=16)
UNET = UNetConfig(channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                  dropout=0.0)


@pytest.mark.parametrize("classes", [0, 3])
@pytest.mark.parametrize("cls", [KD, RectifiedFlow])
def test_vector_baselines_match_kdm_sampling_path(cls, classes):
    target = sampling_path_params(KDM((2,), SMALL, 1.0, classes))
    model = cls((2,), SMALL, 1.0, classes, target)
    assert abs(param_count(model) - target) / target < 0.03
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1]) if classes else None
    assert model(x, y).shape == (5, 2)


@pytest.mark.parametrize("cls", [KD, RectifiedFlow])
def test_image_baselines_match_kdm_sampling_path(cls):
    cfg = dataclasses.replace(SMALL, unet=UNET, latent_channels=1)
    kdm = KDM((1, 8, 8), cfg, 80.0, num_classes=10)
    target = sampling_path_params(kdm)
    assert target == param_count(kdm) - param_count(kdm.E_0)
    model = cls((1, 8, 8), cfg, 80.0, 10, target)
    # UNet widths come in steps of 4 channels, so the match is coarser than for MLPs
    assert abs(param_count(model) - target) / target < 0.15
    x, y = 80.0 * torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    assert model(x, y).shape == (3, 1, 8, 8)


def test_rectified_sampling_is_exact_on_a_straight_coupling():
    """For the coupling x_0 = a z the path x_t = ((1 - t) a + t) z is straight, so Euler with
    the exact velocity lands on x_0 at any step count, and the loss is 0."""
    a, sigma = 0.3, 80.0
    model = RectifiedFlow((2,), SMALL, sigma, 0, 1000)
    model.velocity = lambda x, t, y: (1 - a) * x / ((1 - t[:, None]) * a + t[:, None])
    x_T = sigma * torch.randn(64, 2, dtype=torch.float64)
    for steps in (1, 2, 4, 7):
        out = model.sample(x_T, None, steps=steps)
        torch.testing.assert_close(out, a * x_T / sigma, rtol=1e-12, atol=1e-12)
    assert model.sampling_steps == (1, 2, 4)
    loss, _ = model.loss({"noise": x_T, "clean": a * x_T / sigma}, GLOBAL)
    assert loss.item() < 1e-12  # float32 t; a wrong convention gives ~0.5


def test_kd_learns_a_linear_map():
    torch.manual_seed(0)
    A = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    model = KD((2,), SMALL, 4.0, 0, 2000)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_T = 4.0 * torch.randn(2048, 2)
    batch = {"noise": x_T, "clean": (x_T / 4.0) @ A.T}
    first = model.loss(batch, GLOBAL)[0].item()
    for _ in range(300):
        loss, logs = model.loss(batch, GLOBAL)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # measured: 1.6 -> 2e-4
    assert logs["push_mse"] < 2e-3 * first


def test_method_dispatch_and_errors():
    cfg = preset("checkerboard-tiny")
    meta = {"shape": [2], "num_classes": 0, "sigma_max": 1.0}
    assert isinstance(build_kdm(cfg, meta), KDM)
    for method, cls in (("kd", KD), ("rectified", RectifiedFlow)):
        cfg.model.method = method
        assert isinstance(build_kdm(cfg, meta), cls)
    cfg.model.method = "consistency"
    with pytest.raises(KDMError, match="unknown model.method 'consistency'"):
        build_kdm(cfg, meta)
    lp = dataclasses.replace(SMALL, unet=UNET, distance="lpips")
    with pytest.raises(KDMError, match="rectified regresses velocities"):
        build_student(dataclasses.replace(lp, method="rectified"), (1, 8, 8), 80.0)
    with pytest.raises(KDMError, match="sample_steps must be >= 1"):
        RectifiedFlow((2,), dataclasses.replace(SMALL, sample_steps=0), 1.0, 0, 1000)


def test_rectified_evaluates_its_own_step_count_too():
    model = RectifiedFlow((2,), dataclasses.replace(SMALL, sample_steps=3), 1.0, 0, 1000)
    assert model.sampling_steps == (1, 2, 3, 4)
    x_T = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.equal(model(x_T), model.sample(x_T, steps=3))
        assert not torch.equal(model(x_T), model.sample(x_T, steps=1))
