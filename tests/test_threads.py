"""CPU threads that give way to other processes (`train.threads`)."""

import subprocess
import sys
import time

import pytest
import torch

from koopman_distill import threads
from koopman_distill.threads import WINDOW, LoadFollower, cpu_threads


def test_the_follower_moves_only_when_a_second_of_samples_agree() -> None:
    f = LoadFollower(high=4, cores=4)
    assert f.target == 4
    for _ in range(WINDOW - 1):
        f.want(1)
    assert f.target == 4  # not yet a full window
    f.want(1)
    assert f.target == 3  # cores - others
    for others in [3] * (WINDOW - 1) + [0]:
        f.want(others)
    assert f.target == 3  # a blip does not move it
    for _ in range(WINDOW):
        f.want(7)
    assert f.target == 1  # at least one thread
    for _ in range(WINDOW):
        f.want(0)
    assert f.target == 4  # never more than it started with
    g = LoadFollower(high=2, cores=8)
    for _ in range(WINDOW):
        g.want(0)
    assert g.target == 2


def test_fixed_threads_are_set_and_the_count_restored() -> None:
    before = torch.get_num_threads()
    with cpu_threads(3) as ctl:
        assert torch.get_num_threads() == 3 and ctl.apply() == 3
    assert torch.get_num_threads() == before


def test_one_thread_has_nothing_to_follow() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with cpu_threads(0) as ctl:
            assert ctl.follower is None and ctl.apply() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_takes_a_thread_away(monkeypatch) -> None:
    """A real competitor (a busy loop in another process) is seen in /proc and, on 2 cores,
    leaves the work one thread; the block's module calls apply it."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(threads._running_others() for _ in range(20)) >= 1
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
        try:
            with cpu_threads(0, every_module_call=True) as ctl:
                deadline = time.monotonic() + 10
                while ctl.follower.target != 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert ctl.follower.target == 1
                torch.nn.Linear(2, 2)(torch.zeros(1, 2))  # a module call applies it
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 2 and not ctl.follower._thread.is_alive()
        finally:
            torch.set_num_threads(before)
    finally:
        busy.kill()
        busy.wait()


def test_threads_is_a_setting_a_resumed_run_may_change(tiny, tmp_path) -> None:
    from conftest import kdm, read_json

    run = tmp_path / "k"
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", run,
               "--set", "train.threads=1", "--set", "train.steps=10") == 0
    assert read_json(run / "config.json")["train"]["threads"] == 1
    assert kdm("train", "--resume", run, "--set", "train.steps=20", "--set",
               "train.threads=0") == 0
    assert read_json(run / "config.json")["train"]["threads"] == 0
