"""The offline baselines: sizing against KDM's sampling path, the rectified-flow conventions
(exact on straight paths), training on a closed-form map, conditioning in every domain,
dispatch by ``model.method``, and the adversarial term they take with ``model.w_adv`` > 0."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from koopman_distill.api import build_kdm
from koopman_distill.config import ModelConfig, TrainConfig, UNetConfig, preset
from koopman_distill.errors import KDMError
from koopman_distill.students import (
    KD,
    KDM,
    RectifiedFlow,
    build_student,
    param_count,
    sampling_path_params,
)
from koopman_distill.training import Batches, Trainer
from koopman_distill.training.checkpoint import latest_checkpoint
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


class _Ones:
    """An ExampleRNG stand-in that draws t = 1 for every example."""

    def rand(self, n, *, device=None, dtype=None):
        return torch.ones(n, device=device)


@pytest.mark.parametrize("cls", [KD, RectifiedFlow])
def test_baselines_take_the_adversarial_term_with_w_adv(cls):
    """With w_adv > 0: the domain's critic as an objective, kept off the sampling path, and
    ``w_adv · BCE(C(x̂_0), 1)`` added to the loss on the one-step output (for rectified flow
    ``x_t - t v``, which at t = 1 is its one-step sample); with w_adv = 0 nothing of it."""
    adv_cfg = dataclasses.replace(SMALL, w_adv=0.5, disc_channels=8)
    torch.manual_seed(0)
    plain = cls((2,), SMALL, 4.0, 0, 2000)
    torch.manual_seed(0)
    adv = cls((2,), adv_cfg, 4.0, 0, 2000)
    assert plain.critic is None and plain.adversarial is None and plain.objectives() == ()
    assert adv.objectives() == (adv.adversarial,) and adv.adversarial.critic is adv.critic
    # the critic is built after the network: the same sampling path at the same seed
    net = "G" if cls is KD else "v"
    assert {k.split(".")[0] for k in plain.state_dict()} == {net}
    assert plain.state_dict().keys() == {k: v for k, v in adv.state_dict().items()
                                         if not k.startswith("critic.")}.keys()
    assert all(torch.equal(v, adv.state_dict()[k]) for k, v in plain.state_dict().items())
    assert sampling_path_params(adv) == sampling_path_params(plain) == param_count(plain)
    assert param_count(adv) == param_count(plain) + param_count(adv.critic) > param_count(plain)

    batch = {"noise": 4.0 * torch.randn(64, 2), "clean": torch.randn(64, 2)}
    rng = GLOBAL if cls is KD else _Ones()
    base, base_logs = plain.loss(batch, rng)
    total, logs = adv.loss(batch, rng)
    with torch.no_grad():
        x_hat = adv.sample(batch["noise"], steps=1)  # KD: G(x_T / 4); RF at t = 1: z - v(z, 1)
        logits = adv.critic(x_hat)
    bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    torch.testing.assert_close(total, base + 0.5 * bce)
    assert logs == {**base_logs, "adv": pytest.approx(bce.item())}
    assert torch.equal(adv.adversarial._fake, x_hat)  # the critic's fake batch
    # w_adv = 0 is the plain regression, bitwise
    z, x_0 = batch["noise"] / 4.0, batch["clean"]
    direct = (plain._distance(plain.G(z, 0.0, None), x_0) if cls is KD else
              plain._distance(plain.velocity(z, torch.ones(64), None), z - x_0))
    assert torch.equal(base, direct) and "adv" not in base_logs


def test_rectified_adversarial_input_is_the_straight_path_estimate():
    """At t < 1 the critic sees ``x_t - t v(x_t, t)`` for the t drawn for each example."""
    cfg = dataclasses.replace(SMALL, w_adv=0.1, disc_channels=8)
    model = RectifiedFlow((2,), cfg, 4.0, 0, 2000)
    batch = {"noise": 4.0 * torch.randn(32, 2), "clean": torch.randn(32, 2)}
    torch.manual_seed(3)
    model.loss(batch, GLOBAL)
    torch.manual_seed(3)
    t = torch.rand(32)[:, None]
    x_t = (1 - t) * batch["clean"] + t * batch["noise"] / 4.0
    with torch.no_grad():
        expect = x_t - t * model.velocity(x_t, t[:, 0], None)
    torch.testing.assert_close(model.adversarial._fake, expect)


def test_trainer_trains_a_baselines_critic(tmp_path):
    """KD + adv. through the trainer: the loss logs the term, the critic is stepped as its own
    objective (its weights move, its optimizer is checkpointed)."""
    torch.manual_seed(0)
    model = KD((2,), dataclasses.replace(SMALL, w_adv=0.1, disc_channels=8), 4.0, 0, 2000)
    start = {k: v.clone() for k, v in model.critic.state_dict().items()}
    data = {"noise": 4.0 * torch.randn(64, 2), "clean": torch.randn(64, 2)}
    cfg = TrainConfig(steps=4, batch_size=16, log_every=1, ckpt_every=4, eval_every=0,
                      progress=False)
    Trainer(model, Batches(data, 16, seed=0), cfg, tmp_path).fit()
    rows = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
            if "loss" in r]
    assert len(rows) == 4 and all({"adv", "critic_real", "critic_fake", "push"} <= set(r)
                                  for r in rows)
    assert all(not torch.equal(v, start[k]) for k, v in model.critic.state_dict().items()
               if v.is_floating_point())
    assert "critic_optimizer" in torch.load(latest_checkpoint(tmp_path) / "state.pt",
                                            weights_only=True)
