"""GPU speed options, exercised on the CPU: autocast (bf16; fp16 with a gradient scaler),
channels-last, background prefetching and torch.compile."""

import json

import pytest
import torch

from koopman_distill.config import ModelConfig, TrainConfig, apply_overrides, preset
from koopman_distill.errors import KDMError
from koopman_distill.models import KDM
from koopman_distill.models.kdm_image import ImageKDM
from koopman_distill.training import TensorBatches, Trainer
from koopman_distill.training.checkpoint import latest_checkpoint, load_state
from koopman_distill.training.data import Prefetch
from koopman_distill.training.trainer import seed_everything


def pairs(n=512):
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return {"noise": x_T, "clean": torch.tanh(2 * x_T) * 3}


def make(run_dir, evaluate=None, **kw):
    seed_everything(0)
    model = KDM(2, ModelConfig(width=16, depth=2, latent_dim=8))
    cfg = TrainConfig(**{"steps": 12, "batch_size": 64, "lr": 1e-3, "ema_decay": 0.99,
                         "log_every": 4, "eval_every": 4, "ckpt_every": 4, "progress": False,
                         **kw})
    return Trainer(model, TensorBatches(pairs(), 64, seed=1), cfg, run_dir, evaluate=evaluate)


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                  b.model.state_dict().values(), strict=True))


class Crash(Exception):
    pass


def test_prefetch_is_the_same_run_and_resumes_exactly(tmp_path):
    plain = make(tmp_path / "plain")
    plain.fit()
    ahead = make(tmp_path / "ahead", prefetch=3)
    ahead.fit()
    assert same_weights(plain, ahead)

    def crash_after_8(model, step):
        if step > 8:
            raise Crash
        return {}

    with pytest.raises(Crash):
        make(tmp_path / "part", evaluate=crash_after_8, prefetch=3).fit()
    resumed = make(tmp_path / "part", prefetch=3)
    assert resumed.resume() and resumed.step == 8
    resumed.fit()
    assert same_weights(plain, resumed)
    assert losses(tmp_path / "part") == losses(tmp_path / "plain")


def test_prefetch_keeps_order_and_position():
    src, ref = (TensorBatches({"i": torch.arange(20)}, 3, seed=2) for _ in range(2))
    ahead = Prefetch(src, 4)
    for _ in range(5):
        assert torch.equal(next(ahead)["i"], next(ref)["i"])
    assert ahead.state_dict() == ref.state_dict()  # not the source's, which ran ahead
    state = ahead.state_dict()
    nxt = [next(ref)["i"] for _ in range(3)]
    ahead.load_state_dict(state)
    assert all(torch.equal(next(ahead)["i"], x) for x in nxt)
    ahead.close()


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    make(tmp_path / "fp32").fit()
    bf16 = make(tmp_path / "bf16", precision="bf16")
    bf16.fit()
    for a, b in zip(losses(tmp_path / "fp32"), losses(tmp_path / "bf16"), strict=True):
        assert b == pytest.approx(a, rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights


def test_fp16_scaler_is_checkpointed_and_restored(tmp_path):
    make(tmp_path / "fp32").fit()
    run = tmp_path / "fp16"
    t = make(run, precision="fp16")
    t.fit()
    for a, b in zip(losses(tmp_path / "fp32"), losses(run), strict=True):
        assert b == pytest.approx(a, rel=0.02)  # measured: 0.3%
    state = load_state(latest_checkpoint(run))
    assert state["scaler"]["scale"] == t.scaler.get_scale()
    again = make(run, precision="fp16")
    again.resume()
    assert again.scaler.state_dict() == t.scaler.state_dict()


def test_channels_last_images(tmp_path):
    cfg = apply_overrides(preset("digits8"), ["train.steps=3", "train.ckpt_every=3"])
    g = torch.Generator().manual_seed(1)
    data = {"noise": 80 * torch.randn(32, 1, 8, 8, generator=g),
            "clean": torch.rand(32, 1, 8, 8, generator=g) * 2 - 1,
            "label": torch.randint(0, 10, (32,), generator=g)}

    def run(out, **kw):
        torch.manual_seed(0)
        for k, v in kw.items():
            setattr(cfg.train, k, v)
        t = Trainer(ImageKDM((1, 8, 8), cfg.model, 80.0, 10), TensorBatches(data, 16), cfg.train,
                    out)
        t.fit()
        return t

    nchw = run(tmp_path / "nchw", channels_last=False)
    nhwc = run(tmp_path / "nhwc", channels_last=True)
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(losses(tmp_path / "nchw"), losses(tmp_path / "nhwc"), strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    for (k, a), b in zip(nchw.model.state_dict().items(), nhwc.model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    run(tmp_path / "all", channels_last=True, precision="bf16", prefetch=2)
    for a, b in zip(losses(tmp_path / "nchw"), losses(tmp_path / "all"), strict=True):
        assert b == pytest.approx(a, rel=0.01)  # bf16: measured 0.06%


def test_options_are_settable_and_checked():
    cfg = apply_overrides(preset("checkerboard"), [
        "train.micro_batch=64", "train.precision=bf16", "train.channels_last=true",
        "train.compile=true", "train.prefetch=2"])
    t = cfg.train
    assert (t.micro_batch, t.precision, t.channels_last, t.compile, t.prefetch) == (
        64, "bf16", True, True, 2)
    with pytest.raises(KDMError, match="unknown train.precision 'fp8'"):
        make("unused", precision="fp8")


@pytest.mark.slow
def test_compile_matches_eager(tmp_path):
    eager = make(tmp_path / "eager", steps=4)
    eager.fit()
    compiled = make(tmp_path / "compiled", steps=4, compile=True)
    compiled.fit()
    for a, b in zip(eager.model.state_dict().values(), compiled.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
