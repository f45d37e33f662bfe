"""Multi-process runs (gloo on CPU) against single-process runs: pair stores are bitwise the
same, training with global batch B follows the single-process run with batch B (every student,
in every domain), and a loss that draws from torch's global generator under a split batch is
stopped."""

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

from koopman_distill.config import ModelConfig, TrainConfig, UNetConfig
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore, write_pairs
from koopman_distill.students import build_student
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
    """2-D generator with an adversary: ``G(x_T + 0.1 eps)`` regressed on x_0, plus an
    adversarial term; the objective ``judge`` trains the critic ``C`` to tell x_0 from the
    generator's last outputs."""

    def __init__(self):
        super().__init__()
        self.G = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 2))
        self.C = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))
        self.judge = Judge(self.C)

    def objectives(self):
        return [self.judge]

    def loss(self, batch, rng):
        x = self.G(batch["noise"] + 0.1 * rng.randn_like(batch["noise"]))
        self.judge.fake = x.detach()
        mse = (x - batch["clean"]).square().mean()
        return mse + 0.1 * F.softplus(-self.C(x)).mean(), {"mse": mse.item()}


class Judge:
    """The critic's objective (a plain object: its parameters are the Toy's ``C.*``)."""

    name = "judge"

    def __init__(self, critic: nn.Module):
        self.critic, self.fake = critic, None

    def parameters(self):
        return self.critic.parameters()

    def loss(self, batch, rng):
        real, fake = self.critic(batch["clean"]), self.critic(self.fake)
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


# -- every student follows the single-process run --------------------------------------------
UNET = UNetConfig(channels=4, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                  dropout=0.0)
# name: (example shape, classes, model settings); vectors of 3 dimensions, 8x8 images
STUDENTS = {
    "vec-kdm": ((3,), 0, {}),
    "vec-kdm-adv": ((3,), 0, {"w_adv": 0.1, "koopman": "eigen"}),
    "vec-kd": ((3,), 0, {"method": "kd"}),
    "vec-rectified": ((3,), 0, {"method": "rectified", "sample_steps": 2}),
    "img-kdm": ((1, 8, 8), 0, {}),
    "img-kdm-adv-cond": ((1, 8, 8), 3, {"w_adv": 0.1}),
    "img-kd": ((1, 8, 8), 0, {"method": "kd"}),
    "img-rectified-cond": ((1, 8, 8), 3, {"method": "rectified"}),
}
STEPS = {1: 24, 3: 12}  # by example rank: the image networks are slower on a CPU


def student_pairs(shape: tuple[int, ...], classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sigma = 80.0 if len(shape) == 3 else 2.0
    x_T = sigma * torch.randn(64, *shape, generator=g)
    out = {"noise": x_T, "clean": torch.tanh(x_T / sigma) + 0.1}
    if classes:
        out["label"] = torch.randint(0, classes, (64,), generator=g)
    return out


def train_student(name: str, run_dir: Path, **train) -> None:
    shape, classes, model = STUDENTS[name]
    seed_everything(5)
    cfg = ModelConfig(width=16, depth=2, latent_dim=8, unet=UNET, disc_channels=8, **model)
    student = build_student(cfg, shape, 80.0 if len(shape) == 3 else 2.0, classes)
    steps = STEPS[len(shape)]
    tcfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, ema_decay=0.9, log_every=1,
                       ckpt_every=steps, eval_every=0, progress=False, **train)
    data = Batches(student_pairs(shape, classes), rank_batch_size(tcfg.batch_size), 1,
                         rank(), world_size())
    Trainer(student, data, tcfg, run_dir).fit()


def _worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    try:
        for name in STUDENTS:
            train_student(name, Path(out_dir) / f"{name}-split", micro_batch=4)
        t = train_toy(Path(out_dir) / "two")
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


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """What the tests below compare against one process, run in one 2-process gloo session
    (starting one costs seconds): the students, the toy with its critic, a failing pair run."""
    root = tmp_path_factory.mktemp("two")
    mp.spawn(_worker, args=(str(root / "pg"), str(root)), nprocs=2)
    return root


def test_two_processes_with_critic_match_one(two_processes, tmp_path):
    """Generator, critic and EMA of a 2-process run equal the 1-process run's; both ranks hold
    identical weights; rank 0 alone writes; errors on one rank reach all; pair generation that
    failed on one rank resumes to the 1-process store."""
    two = two_processes
    # the failed 2-process pair run kept shards 0-2; a rerun completes it, bitwise as 1 process
    manifest = json.loads((two / "store/manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2] and not manifest["complete"]
    write_pairs(two / "store", toy_generate, **STORE)
    write_pairs(tmp_path / "fresh", toy_generate, **STORE)
    for f in (tmp_path / "fresh").iterdir():
        assert f.read_bytes() == (two / "store" / f.name).read_bytes(), f.name

    one = train_toy(tmp_path / "one")
    r0, r1 = (torch.load(two / f"rank{i}.pt") for i in range(2))
    for name, ref in (("model", one.model.state_dict()), ("ema", one.ema.model.state_dict())):
        for k, v in ref.items():
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)
            torch.testing.assert_close(r0[name][k], v, rtol=1e-5, atol=1e-6)
    a, b = loss_rows(tmp_path / "one"), loss_rows(two / "two")
    assert [x["step"] for x in b] == list(range(1, 13))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["critic"] == pytest.approx(x["critic"], rel=1e-5)
    assert sorted(p.name for p in (two / "two/checkpoints").iterdir()) == [
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
        parts.append(rng.batch_part(6, start, start + 2, g).randn_like(torch.empty(2, 3)))
    assert torch.equal(torch.cat(parts), whole)
    torch.manual_seed(5)
    plain = torch.rand(3), torch.randn(2), torch.randn_like(torch.empty(2, 3))
    torch.manual_seed(5)  # the whole batch in one part: torch's global generator
    ours = rng.GLOBAL.rand(3), rng.GLOBAL.randn(2), rng.GLOBAL.randn_like(torch.empty(2, 3))
    assert all(torch.equal(a, b) for a, b in zip(plain, ours, strict=True))
    with pytest.raises(ValueError, match="3 rows"):
        rng.batch_part(6, 0, 2, g).randn(3)


def test_every_student_follows_one_process_under_split_batches(two_processes, tmp_path):
    """KDM (with and without the adversarial critic), KD and rectified flow, on vectors and
    images (conditional too), under 2 processes of 2 micro-batches each: every logged loss
    within 1e-5 of the single-process run with the same global batch of 16, at every step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is the faster
    try:
        for name in STUDENTS:
            train_student(name, tmp_path / f"{name}-one")
    finally:
        torch.set_num_threads(threads)
    for name, (shape, _, _) in STUDENTS.items():
        one = loss_rows(tmp_path / f"{name}-one")
        split = loss_rows(two_processes / f"{name}-split")
        assert [r["step"] for r in one] == list(range(1, STEPS[len(shape)] + 1))
        assert len(split) == len(one), name
        for x, y in zip(one, split, strict=True):
            assert x.keys() == y.keys()
            for k in x.keys() - {"step", "lr", "time", "nonfinite"}:
                assert y[k] == pytest.approx(x[k], rel=1e-5), (name, x["step"], k)


class GlobalNoise(nn.Module):
    """A loss that draws its noise from torch's global generator (what ``rng`` is for), or,
    with ``dropout``, only dropout masks from it (allowed)."""

    def __init__(self, dropout: bool = False):
        super().__init__()
        self.dropout = dropout
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 2))

    def loss(self, batch, rng):
        x = batch["noise"]
        noise = rng.randn_like(x) if self.dropout else torch.randn_like(x)
        loss = (self.net(x + noise) - batch["clean"]).square().mean()
        return loss, {}


def test_split_batch_refuses_a_loss_drawing_from_the_global_generator(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, micro_batch=4, log_every=1, eval_every=0,
                      ckpt_every=10, progress=False)
    data = toy_pairs()
    with pytest.raises(KDMError, match=r"^GlobalNoise.loss drew random numbers from torch's "
                       r"global generator under a split batch .* draw per-example noise from "
                       r"the loss's rng argument") as e:
        Trainer(GlobalNoise(), Batches(data, 8), cfg, tmp_path / "bad").fit()
    assert "\n" not in str(e.value)
    Trainer(GlobalNoise(dropout=True), Batches(data, 8), cfg, tmp_path / "ok").fit()
    cfg.micro_batch = 0  # a whole batch may draw from anywhere
    Trainer(GlobalNoise(), Batches(data, 8), cfg, tmp_path / "whole").fit()


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
