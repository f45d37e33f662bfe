"""``train.tensorboard=true``: TensorBoard events beside log.jsonl."""

import sys

import pytest
from conftest import kdm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from koopman_distill.training.trainer import read_log

TRAIN = ["--preset", "checkerboard-tiny", "--set", "train.tensorboard=true", "--set",
         "train.log_every=5", "--set", "train.eval_every=10", "--set", "train.ckpt_every=10"]


def events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_events_hold_the_logged_numbers_and_a_picture_of_samples(tiny, tmp_path):
    run = tmp_path / "run"
    assert kdm("train", *TRAIN, "--pairs", tiny["pairs"], "--out", run, "--set",
               "train.steps=10") == 0
    # resumed to step 20: the events go on in the same directory, each step once
    assert kdm("train", "--resume", run, "--set", "train.steps=20") == 0
    acc, rows = events(run), read_log(run / "log.jsonl")
    steps = [r for r in rows if "lr" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    for key in ("loss", "latent", "rec", "push", "lr", "time"):
        got = acc.Scalars(key)
        assert [e.step for e in got] == [r["step"] for r in steps], key
        assert [e.value for e in got] == pytest.approx([r[key] for r in steps], rel=1e-6), key
    mse = [r for r in rows if "eval/pair_mse" in r]
    assert [e.value for e in acc.Scalars("eval/pair_mse")] == pytest.approx(
        [r["eval/pair_mse"] for r in mse], rel=1e-6)
    # steps per second between two rows of one process (the resumed one starts afresh)
    assert [e.step for e in acc.Scalars("steps_per_s")] == [10, 20]
    pictures = acc.Images("samples")
    assert [p.step for p in pictures] == [10, 20]
    assert pictures[0].encoded_image_string[:4] == b"\x89PNG" and pictures[0].width > 100


def test_tensorboard_without_the_package_is_refused_before_any_work(tiny, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    assert kdm("train", *TRAIN, "--pairs", tiny["pairs"], "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "pip install 'koopman-distill[tensorboard]'" in err
    assert not (tmp_path / "run").exists()
