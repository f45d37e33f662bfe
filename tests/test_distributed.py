"""Multi-process runs (gloo on CPU) against single-process runs: pair stores are bitwise the
same, training with global batch B follows the single-process run with batch B."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import kdm
from safetensors.torch import load_file
from torch import nn

from koopman_distill.config import TrainConfig
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore, write_pairs
from koopman_distill.training import Batches, Trainer, rng
from koopman_distill.training.data import rank_batch_size
from koopman_distill.training.distributed import is_main, on_main, rank, world_size
from koopman_distill.training.trainer import seed_everything


def torchrun(*args: object) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 kdm ARGS`` on this machine, one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "koopman_distill.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def loss_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def weights(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"checkpoints/step-{step:08d}/{name}.safetensors"))


def assert_close_weights(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * a[k].abs().max().item())


TRAIN = ["--preset", "checkerboard-tiny", "--set", "train.steps=40", "--set",
         "train.log_every=1", "--set", "train.eval_every=0", "--set", "train.ckpt_every=10"]


def test_torchrun_pairs_and_training_match_one_process(tiny, tmp_path):
    # pairs: each process generates other shards, rank 0 writes; bitwise the 1-process store
    r = torchrun("pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "pairs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("pair store:") == 1  # rank 0 alone prints
    one, two = tiny["pairs"], tmp_path / "pairs"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for f in one.iterdir():
        assert f.read_bytes() == (two / f.name).read_bytes(), f.name

    # training: 2 processes x 2 micro-batches of 16 against 1 process, batch 64 throughout
    assert kdm("train", *TRAIN, "--pairs", one, "--out", tmp_path / "k1") == 0
    r = torchrun("train", *TRAIN, "--pairs", two, "--out", tmp_path / "k2",
                 "--set", "train.micro_batch=16")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = loss_rows(tmp_path / "k1"), loss_rows(tmp_path / "k2")
    assert [x["step"] for x in b] == list(range(1, 41))  # one log, written once
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "latent", "rec", "push"):
            assert y[k] == pytest.approx(x[k], rel=1e-5), (x["step"], k)
    for name in ("model", "ema"):
        assert_close_weights(weights(tmp_path / "k1", 40, name),
                             weights(tmp_path / "k2", 40, name))

    # resume the 2-process run from step 30 in one process (4 micro-batches): same end
    k3 = tmp_path / "k3"
    shutil.copytree(tmp_path / "k2", k3)
    (k3 / "checkpoints/latest").write_text("step-00000030\n")
    assert kdm("train", "--resume", k3) == 0
    assert [x["step"] for x in loss_rows(k3)] == list(range(1, 41))
    for x, y in zip(loss_rows(k3)[30:], b[30:], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    assert_close_weights(weights(k3, 40), weights(tmp_path / "k2", 40))


class Toy(nn.Module):
    """2-D generator with a critic: ``G(x_T + 0.1 eps)`` regressed on x_0, plus an adversarial
    term; the critic tells x_0 from the generator's last outputs."""

    def __init__(self):
        super().__init__()
        self.G = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 2))
        self.critic = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))

    def loss(self, batch):
        x = self.G(batch["noise"] + 0.1 * rng.randn_like(batch["noise"]))
        self._fake = x.detach()
        mse = (x - batch["clean"]).square().mean()
        return mse + 0.1 * F.softplus(-self.critic(x)).mean(), {"mse": mse.item()}

    def critic_loss(self, batch):
        real, fake = self.critic(batch["clean"]), self.critic(self._fake)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        return loss, {"critic": loss.item()}


def toy_pairs() -> dict[str, torch.Tensor]:
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    return {"noise": x_T, "clean": torch.tanh(2 * x_T)}


def train_toy(run_dir: Path, **kw) -> Trainer:
    seed_everything(3)
    cfg = TrainConfig(steps=12, batch_size=32, lr=3e-3, ema_decay=0.9, log_every=1,
                      ckpt_every=6, eval_every=0, progress=False, **kw)
    data = Batches(toy_pairs(), rank_batch_size(cfg.batch_size), 1, rank(), world_size())
    t = Trainer(Toy(), data, cfg, run_dir)
    t.fit()
    return t


def toy_generate(g: torch.Generator, count: int) -> dict[str, torch.Tensor]:
    noise = torch.randn(count, 2, generator=g)
    return {"noise": noise, "clean": torch.sin(3 * noise)}


STORE = {"n": 50, "shard_size": 10, "seed": 7, "sigma_max": 1.0, "shape": (2,),
         "teacher": {"kind": "toy"}, "sampler": {"method": "none"}, "nfe": 1,
         "progress": False}


def _worker(r: int, init_file: str, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    try:
        t = train_toy(Path(run_dir))
        torch.save({"model": t.model.state_dict(), "ema": t.ema.model.state_dict()},
                   Path(out_dir) / f"rank{r}.pt")

        calls = []

        def flaky(g: torch.Generator, count: int) -> dict[str, torch.Tensor]:
            calls.append(count)
            if r == 1 and len(calls) == 2:  # shard 3 (rank 1 makes shards 1, 3)
                raise KDMError("the teacher failed")
            return toy_generate(g, count)

        with pytest.raises(KDMError, match="the teacher failed"):  # on both ranks
            write_pairs(Path(out_dir) / "store", flaky, **STORE)

        def fail() -> None:
            raise KDMError("only rank 0 knows")

        with pytest.raises(KDMError, match="only rank 0 knows"):
            on_main(fail)
        assert on_main(lambda: rank() + 7) == 7 and is_main() == (r == 0)
    finally:
        dist.destroy_process_group()


def test_two_processes_with_critic_match_one(tmp_path):
    """Generator, critic and EMA of a 2-process run equal the 1-process run's; both ranks hold
    identical weights; rank 0 alone writes; errors on one rank reach all; pair generation that
    failed on one rank resumes to the 1-process store."""
    mp.spawn(_worker, args=(str(tmp_path / "pg"), str(tmp_path / "two"), str(tmp_path)),
             nprocs=2)
    # the failed 2-process pair run kept shards 0-2; a rerun completes it, bitwise as 1 process
    manifest = json.loads((tmp_path / "store/manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2] and not manifest["complete"]
    write_pairs(tmp_path / "store", toy_generate, **STORE)
    write_pairs(tmp_path / "fresh", toy_generate, **STORE)
    for f in (tmp_path / "fresh").iterdir():
        assert f.read_bytes() == (tmp_path / "store" / f.name).read_bytes(), f.name

    one = train_toy(tmp_path / "one")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    for name, ref in (("model", one.model.state_dict()), ("ema", one.ema.model.state_dict())):
        for k, v in ref.items():
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)
            torch.testing.assert_close(r0[name][k], v, rtol=1e-5, atol=1e-6)
    a, b = loss_rows(tmp_path / "one"), loss_rows(tmp_path / "two")
    assert [x["step"] for x in b] == list(range(1, 13))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["critic"] == pytest.approx(x["critic"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir()) == [
        "latest", "step-00000006", "step-00000012"]


def test_micro_batches_match_whole_batch(tmp_path):
    """Gradient accumulation over 4 micro-batches (critic included) follows the whole batch."""
    whole = train_toy(tmp_path / "whole")
    micro = train_toy(tmp_path / "micro", micro_batch=8)
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(micro.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    for x, y in zip(loss_rows(tmp_path / "whole"), loss_rows(tmp_path / "micro"), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    with pytest.raises(KDMError, match="micro_batch 12 does not divide the 32 rows"):
        train_toy(tmp_path / "bad", micro_batch=12)


def test_batch_parts_draw_the_whole_batch_noise():
    g = torch.Generator()
    state = g.get_state()
    whole = torch.randn(6, 3, generator=g)
    parts = []
    for start in (0, 2, 4):
        g.set_state(state)
        with rng.batch_part(6, start, start + 2, g):
            parts.append(rng.randn_like(torch.empty(2, 3)))
    assert torch.equal(torch.cat(parts), whole)
    assert rng.rand(3).shape == (3,)  # outside a part: plain torch.rand
    with rng.batch_part(6, 0, 2, g), pytest.raises(ValueError, match="3 rows"):
        rng.randn(3)


def test_ranks_split_each_global_batch(tiny):
    """Rank r of W reads rows r*b:(r+1)*b of the batch one process reads with b*W."""
    store = PairStore(tiny["pairs"])
    tensors = {"i": torch.arange(100)}
    for make in (lambda b, r, w: Batches(store, b, 3, r, w, memory_budget=0),  # streamed
                 lambda b, r, w: Batches(store, b, 3, r, w),  # read into memory
                 lambda b, r, w: Batches(tensors, b, 3, r, w)):
        one = make(24, 0, 1)
        ranks = [make(8, r, 3) for r in range(3)]
        for _ in range(30):  # several epochs
            whole = next(one)
            parts = [next(s) for s in ranks]
            for k, v in whole.items():
                assert torch.equal(torch.cat([p[k] for p in parts]), v)
        assert ranks[1].state_dict() == one.state_dict()  # positions count global batches
