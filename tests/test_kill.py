"""Kill-anywhere guarantees, proven with real SIGKILLs.

`kdm pairs` and `kdm train` are killed at every commit point of a tiny run (just before and
just after each ``os.replace``: every atomic write, checkpoint rename and pointer update), at
random commit points several times in a row, and at random times (in forked children of
``kill_harness.py``, and as separate ``python -m koopman_distill.cli`` processes). Rerunning
(``--resume`` for training) must then give files bitwise identical to an uninterrupted run:
the same shards and manifest, the same checkpoints (weights, EMA, optimizer, critic, RNG and
data position) and the same log rows, with no temporary or partial file left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import contents

HARNESS = Path(__file__).with_name("kill_harness.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process computes with one thread


class Harness:
    """Client of ``kill_harness.py``: runs ``kdm`` commands in forked, killable children."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(HARNESS)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)

    def run(self, *argv: object, **kill: object) -> dict:
        req = {"argv": [str(a) for a in argv], "log": str(self.log), **kill}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"kill harness died; see {self.log}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("harness") / "children.log")
    yield h
    h.close()


def cli_killed_at_random(argv: list, ready, delay: float) -> int:
    """Start ``python -m koopman_distill.cli ARGV``; SIGKILL it ``delay`` s after ``ready()``."""
    proc = subprocess.Popen([sys.executable, "-m", "koopman_distill.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


# -- pairs ------------------------------------------------------------------------------------
def pairs_argv(tiny, out: Path, *extra: str) -> list:
    return ["pairs", "--teacher", tiny["teacher"], "--out", out, *extra]


SMALL_STORE = ("--n", "300", "--set", "pairs.shard_size=100")  # 3 shards


def test_pairs_killed_at_every_commit_point(harness, tiny, tmp_path):
    """22 kill points: before and after each of the 11 commits (first manifest; noise, clean
    and manifest of each of 3 shards; manifest marked complete)."""
    ref = harness.run(*pairs_argv(tiny, tmp_path / "ref", *SMALL_STORE))
    assert ref["status"] == 0
    assert len(ref["replaces"]) == 11
    expected = contents(tmp_path / "ref")
    assert len(expected) == 7  # manifest + 3 x (noise, clean): nothing else
    for k in range(1, 12):
        for when in ("before", "after"):
            out = tmp_path / f"{when}-{k}"
            argv = pairs_argv(tiny, out, *SMALL_STORE)
            assert harness.run(*argv, kill_at=k, when=when)["status"] == -signal.SIGKILL
            assert harness.run(*argv)["status"] == 0
            assert contents(out) == expected, f"killed {when} commit {k}"


def test_pairs_survive_repeated_kills(harness, tiny, tmp_path):
    """One store killed 9 times in a row, then completed: 4 times at random commit points,
    4 times at random times while shards are generated (a random delay after a random shard
    appears), once as a `python -m koopman_distill.cli` process at a random time."""
    extra = ("--n", "3000", "--set", "pairs.shard_size=100", "--set", "teacher.steps=40")
    assert harness.run(*pairs_argv(tiny, tmp_path / "ref", *extra))["status"] == 0
    out, rng = tmp_path / "store", random.Random(5)
    argv = pairs_argv(tiny, out, *extra)
    for _ in range(4):
        kill = harness.run(*argv, kill_at=rng.randint(1, 9), when=rng.choice(["before", "after"]))
        assert kill["status"] == -signal.SIGKILL
    timed = []
    for _ in range(4):
        shard = len(list(out.glob("clean-*.npy"))) + rng.randint(1, 4)
        timed.append(harness.run(*argv, after_file=str(out / f"clean-{shard:05d}.npy"),
                                 delay=rng.uniform(0, 0.02))["status"])
    assert -signal.SIGKILL in timed
    manifest = out / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert cli_killed_at_random(argv, lambda: manifest.stat().st_mtime_ns != before,
                                rng.uniform(0, 0.1)) in (-signal.SIGKILL, 0)
    assert harness.run(*argv)["status"] == 0
    assert contents(out) == contents(tmp_path / "ref")


# -- train ------------------------------------------------------------------------------------
def train_argv(tiny, out: Path, *extra: str) -> list:
    return ["train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", out,
            *extra]


def finish_train(harness, tiny, out: Path, *extra: str) -> None:
    """What a user does after a kill: `--resume` once the run exists, else the command again."""
    argv = (["train", "--resume", out] if (out / "run.json").exists()
            else train_argv(tiny, out, *extra))
    assert harness.run(*argv)["status"] == 0


SHORT_RUN = ("--set", "train.steps=30", "--set", "train.keep_checkpoints=2")  # ckpt 10, 20, 30


def test_train_killed_at_every_commit_point(harness, tiny, tmp_path):
    """18 kill points: before and after each of the 9 commits (config.json, run.json, then per
    checkpoint the directory rename and the `latest` pointer, and the removal of step 10)."""
    ref = harness.run(*train_argv(tiny, tmp_path / "ref", *SHORT_RUN))
    assert ref["status"] == 0
    assert len(ref["replaces"]) == 9
    expected = contents(tmp_path / "ref")
    assert sorted(p for p in expected if p.startswith("checkpoints/step")) == [
        f"checkpoints/step-000000{s}/{f}" for s in (20, 30)
        for f in ("config.json", "ema.safetensors", "model.safetensors", "state.pt")]
    for k in range(1, 10):
        for when in ("before", "after"):
            out = tmp_path / f"{when}-{k}"
            argv = train_argv(tiny, out, *SHORT_RUN)
            assert harness.run(*argv, kill_at=k, when=when)["status"] == -signal.SIGKILL
            finish_train(harness, tiny, out, *SHORT_RUN)
            assert contents(out) == expected, f"killed {when} commit {k}"


def test_train_survives_repeated_kills(harness, tiny, tmp_path):
    """One run killed 7 times in a row, then resumed to the end: twice at random commit
    points, 4 times at random times in training (a random delay after a random checkpoint
    appears), once as a `python -m koopman_distill.cli` process at a random time. Weights,
    EMA, optimizer state, RNG, data position and log equal an uninterrupted run's bitwise."""
    extra = ("--set", "train.steps=200", "--set", "train.ckpt_every=20",
             "--set", "train.eval_every=50", "--set", "train.log_every=10")
    assert harness.run(*train_argv(tiny, tmp_path / "ref", *extra))["status"] == 0
    out, rng = tmp_path / "run", random.Random(7)
    kills = [harness.run(*train_argv(tiny, out, *extra), kill_at=5, when="after"),
             harness.run("train", "--resume", out, kill_at=rng.randint(2, 6), when="before")]
    assert all(k["status"] == -signal.SIGKILL for k in kills)
    timed = []
    for _ in range(4):
        pointer = out / "checkpoints" / "latest"
        done = int(pointer.read_text().split("-")[1]) if pointer.exists() else 0
        step = done + 20 * rng.randint(1, 2)
        timed.append(harness.run("train", "--resume", out,
                                 after_file=str(out / "checkpoints" / f"step-{step:08d}"),
                                 delay=rng.uniform(0, 0.03))["status"])
    assert -signal.SIGKILL in timed
    log = out / "log.jsonl"
    size = log.stat().st_size
    assert cli_killed_at_random(["train", "--resume", out], lambda: log.stat().st_size != size,
                                rng.uniform(0, 0.1)) in (-signal.SIGKILL, 0)
    finish_train(harness, tiny, out, *extra)
    assert contents(out) == contents(tmp_path / "ref")


@pytest.fixture(scope="module")
def image_pairs(tmp_path_factory):
    """64 random labelled 8x8 pairs: enough for the digits8 KDM and its critic."""
    from koopman_distill.pairs import write_arrays

    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("image") / "pairs"
    write_arrays(out, 80 * rng.standard_normal((64, 1, 8, 8)),
                 np.tanh(rng.standard_normal((64, 1, 8, 8))), rng.integers(0, 10, 64),
                 shard_size=32, sigma_max=80.0, teacher={"kind": "random", "num_classes": 10},
                 sampler={"method": "none"}, nfe=None, source={"kind": "test"})
    return out


def test_image_train_with_critic_killed(harness, image_pairs, tmp_path):
    """The class-conditional image KDM with its adversarial critic, killed at 4 commit points
    (a checkpoint renamed but not yet pointed at, with and without an older one; the pointer
    not yet moved; the oldest checkpoint not yet removed): resumed runs equal an uninterrupted
    one bitwise, critic and critic optimizer included."""
    def argv(out: Path) -> list:
        return ["train", "--preset", "digits8", "--pairs", image_pairs, "--out", out,
                "--set", "model.w_adv=0.05", "--set", "train.steps=6",
                "--set", "train.ckpt_every=2", "--set", "train.keep_checkpoints=2"]

    ref = harness.run(*argv(tmp_path / "ref"))
    assert ref["status"] == 0 and len(ref["replaces"]) == 9
    expected = contents(tmp_path / "ref")
    state = torch.load(tmp_path / "ref/checkpoints/step-00000006/state.pt", weights_only=True)
    assert "critic_optimizer" in state
    for k, when in ((3, "after"), (5, "after"), (6, "before"), (9, "before")):
        out = tmp_path / f"{when}-{k}"
        assert harness.run(*argv(out), kill_at=k, when=when)["status"] == -signal.SIGKILL
        assert harness.run("train", "--resume", out)["status"] == 0
        assert contents(out) == expected, f"killed {when} commit {k}"
