"""The generic trainer: exact resume, EMA, schedules, the non-finite guard, checkpoints."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from koopman_distill.config import ModelConfig, TrainConfig
from koopman_distill.errors import KDMError
from koopman_distill.students import KDM
from koopman_distill.training import Batches, Trainer
from koopman_distill.training.checkpoint import latest_checkpoint
from koopman_distill.training.ema import EMA
from koopman_distill.training.trainer import lr_at, seed_everything


def pairs(n=512):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 2, generator=g)
    return {"noise": x_T, "clean": torch.tanh(2 * x_T) * 3}


def make(run_dir, evaluate=None, steps=24, sigma_z_schedule="constant", **kw):
    seed_everything(0)
    model = KDM((2,), ModelConfig(width=16, depth=2, latent_dim=8,
                               sigma_z_schedule=sigma_z_schedule))
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3, lr_schedule="cosine", warmup=3,
                      ema_decay=0.99, log_every=4, eval_every=8, ckpt_every=8,
                      progress=False, **kw)
    return Trainer(model, Batches(pairs(), 64, seed=1), cfg, run_dir, evaluate=evaluate)


class Crash(Exception):
    pass


@pytest.mark.parametrize("sigma_z_schedule", ["constant", "cosine"])
def test_resume_is_bitwise_identical(tmp_path, sigma_z_schedule):
    full = make(tmp_path / "full", evaluate=lambda m, s: {"s": float(s)},
                sigma_z_schedule=sigma_z_schedule)
    full.fit()

    def crash_after_16(model, step):  # checkpoints are at 8, 16, 24: die at step 20
        if step > 16:
            raise Crash
        return {"s": float(step)}

    part = make(tmp_path / "part", evaluate=crash_after_16, sigma_z_schedule=sigma_z_schedule)
    part.cfg.eval_every = 4
    with pytest.raises(Crash):
        part.fit()
    assert latest_checkpoint(tmp_path / "part").name == "step-00000016"
    resumed = make(tmp_path / "part", evaluate=lambda m, s: {"s": float(s)},
                   sigma_z_schedule=sigma_z_schedule)
    assert resumed.resume() and resumed.step == 16
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.model.state_dict().values(),
                    resumed.ema.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    def losses(run):
        rows = map(json.loads, (run / "log.jsonl").read_text().splitlines())
        return [{k: v for k, v in r.items() if k != "time"} for r in rows if "loss" in r]

    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_deterministic_mode_switches_kernels_and_keeps_cpu_results(tmp_path):
    try:
        det = make(tmp_path / "det", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        det.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    plain = make(tmp_path / "plain")
    plain.fit()
    for a, b in zip(det.model.state_dict().values(), plain.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_checkpoints_keep_and_pointer(tmp_path):
    t = make(tmp_path, keep_checkpoints=2)
    t.fit()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000016", "step-00000024"]
    assert latest_checkpoint(tmp_path).name == "step-00000024"
    ema = load_file(str(tmp_path / "checkpoints/step-00000024/ema.safetensors"))
    for k, v in t.ema.model.state_dict().items():
        assert torch.equal(ema[k], v)  # the EMA is what is saved as EMA
    raw = load_file(str(tmp_path / "checkpoints/step-00000024/model.safetensors"))
    assert not all(torch.equal(raw[k], v) for k, v in ema.items())
    assert not list(tmp_path.glob("checkpoints/.tmp*"))


def test_lr_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, lr_schedule="cosine", warmup=10)
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.5)
    assert lr_at(cfg, 109) == pytest.approx(0.5 * (1 + math.cos(0.99 * math.pi)))
    with pytest.raises(KDMError, match="unknown lr_schedule"):
        lr_at(TrainConfig(lr_schedule="step"), 0)


def test_ema_average():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.75)


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def loss(self, batch, rng):
        return self.w * float("nan"), {}


def test_nonfinite_steps_stop_the_run(tmp_path):
    cfg = TrainConfig(steps=100, batch_size=8, max_nonfinite=5, progress=False, log_every=1,
                      ckpt_every=1000)
    t = Trainer(NaNModel(), Batches({"x": torch.zeros(16, 1)}, 8), cfg, tmp_path)
    with pytest.raises(KDMError, match="5 consecutive non-finite losses or gradients at step 4"):
        t.fit()
    assert t.model.w.item() == 1.0  # never stepped on a NaN
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-2]["nonfinite"] == 4  # the row of step 4, then the stop
    assert rows[-1] == {"step": 4, "nonfinite": 5, "stopped": "non-finite"}


def test_batches_resume_and_cover():
    data = Batches({"i": torch.arange(10)}, 3, seed=5)
    seen = torch.cat([next(data)["i"] for _ in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # one epoch, no repeats
    state = data.state_dict()
    a = [next(data)["i"] for _ in range(4)]
    data2 = Batches({"i": torch.arange(10)}, 3, seed=5)
    data2.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(a, [next(data2)["i"] for _ in range(4)],
                                                   strict=True))
    r0 = Batches({"i": torch.arange(12)}, 2, seed=1, rank=0, world_size=2)
    r1 = Batches({"i": torch.arange(12)}, 2, seed=1, rank=1, world_size=2)
    both = torch.cat([next(r)["i"] for r in (r0, r1) for _ in range(3)])
    assert sorted(both.tolist()) == list(range(12))
    with pytest.raises(KDMError, match="batch size 20 is larger than the 10 examples"):
        Batches({"i": torch.arange(10)}, 20)


def test_trainer_reports_progress_to_the_latent_noise_schedule(tmp_path):
    seen = []
    t = make(tmp_path, steps=8, sigma_z_schedule="cosine")
    loss = t.model.loss
    t.model.loss = lambda batch, rng: (seen.append(t.model.progress), loss(batch, rng))[1]
    t.fit()
    assert seen == [s / 8 for s in range(8)]
