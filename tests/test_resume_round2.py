"""Resume never deletes or borrows work: a lost, garbled or escaping ``latest`` pointer falls
back to the newest complete checkpoint and says so; a pre-empted run (SIGTERM, Ctrl-C)
checkpoints at its current step; ``--resume --set train.steps=N`` extends a run; checkpoint
files get the usual permissions; relative paths are recorded absolute; the top-level guard
turns OSError, MemoryError, a closed pipe and Ctrl-C into one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import contents, kdm, kdm_run

from koopman_distill import cli
from koopman_distill.io import read_json

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def proc(*argv: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "koopman_distill.cli", *map(str, argv)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


@pytest.fixture(scope="module")
def ref30(tiny, tmp_path_factory):
    """An uninterrupted 30-step run keeping every checkpoint (10, 20, 30)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", run,
               "--set", "train.steps=30", "--set", "train.keep_checkpoints=3") == 0
    return run


def killed_after_20(ref: Path, dst: Path) -> Path:
    """``ref`` as a run killed between steps 20 and 30 would have left it."""
    shutil.copytree(ref, dst)
    shutil.rmtree(dst / "checkpoints" / "step-00000030")
    (dst / "checkpoints" / "latest").write_text("step-00000020\n")
    rows = (dst / "log.jsonl").read_text().splitlines()
    (dst / "log.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= 20))
    return dst


def _symlink_loop(p: Path) -> None:
    p.unlink()
    os.symlink(p.name, p)


POINTERS = {
    "missing": lambda p: p.unlink(),
    "empty": lambda p: p.write_text(""),
    "garbled": lambda p: p.write_bytes(b"\xff\x00step-\x01"),
    "absolute path into another run": lambda p: p.write_text(
        str(p.parent.parent.parent / "other" / "checkpoints" / "step-00000010")),
    "parent-relative path": lambda p: p.write_text("../../other/checkpoints/step-00000010\n"),
    "looping symlink": _symlink_loop,
    "older checkpoint": lambda p: p.write_text("step-00000010\n"),
}


@pytest.mark.parametrize("pointer", list(POINTERS))
def test_resume_with_a_broken_pointer_keeps_every_checkpoint(ref30, tmp_path, pointer):
    run = killed_after_20(ref30, tmp_path / "run")
    shutil.copytree(ref30, tmp_path / "other")  # what an escaping pointer would borrow
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("step-*/*")}
    POINTERS[pointer](run / "checkpoints" / "latest")
    code, out, err = kdm_run("train", "--resume", run)
    assert code == 0, err
    assert "using the newest complete checkpoint step-00000020" in err
    assert "step 30/30" in out
    # the checkpoints from before were not rewritten: the run continued from step 20
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").glob(
        "step-0000001*/*")} == {k: v for k, v in kept.items()}
    assert contents(run) == contents(ref30)  # bitwise the uninterrupted run
    assert (run / "checkpoints" / "latest").read_text() == "step-00000030\n"


def test_sample_never_uses_another_runs_weights(ref30, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ref30, other)
    for p in (other / "checkpoints").glob("step-*/ema.safetensors"):  # other weights
        p.write_bytes((ref30 / "checkpoints/step-00000010/ema.safetensors").read_bytes())
    run = tmp_path / "run"
    shutil.copytree(ref30, run)
    (run / "checkpoints" / "latest").write_text(str(other / "checkpoints" / "step-00000030"))
    assert kdm_run("sample", ref30, "--n", 50, "--out", tmp_path / "a.npy")[0] == 0
    code, _, err = kdm_run("sample", run, "--n", 50, "--out", tmp_path / "b.npy")
    assert code == 0 and "is not a complete checkpoint of this run" in err
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_an_incomplete_newer_checkpoint_is_left_alone(ref30, tmp_path):
    run = killed_after_20(ref30, tmp_path / "run")
    damaged = run / "checkpoints" / "step-00000030"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"part of a synced copy")
    code, _, err = kdm_run("train", "--resume", run)
    assert code == 0, err
    assert "step-00000030 is incomplete and left as it is; using step-00000020" in err
    aside = run / "checkpoints" / "step-00000030.incomplete"
    assert (aside / "model.safetensors").read_bytes() == b"part of a synced copy"
    shutil.rmtree(aside)
    assert contents(run) == contents(ref30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_checkpoints_at_the_current_step(tiny, tmp_path, sig):
    """SIGTERM (a cluster's pre-emption) or Ctrl-C: the run writes a checkpoint at the step it
    reached (not the last periodic one), exits 128 + signal with one line naming the command
    that continues, and that command finishes bitwise as an uninterrupted run."""
    run = tmp_path / "run"
    common = ["--set", "train.ckpt_every=100000", "--set", "train.eval_every=0",
              "--set", "train.log_every=10"]
    p = proc("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", run,
             "--set", "train.steps=100000", *common)
    deadline = time.time() + 120
    while not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") > 2):
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig
    [line] = err.strip().splitlines()
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1
    step = int(ckpts[0].name.split("-")[1])
    assert step >= 30
    assert line == (f"kdm: error: stopped by {signal.Signals(sig).name} at step {step}, "
                    f"checkpoint {ckpts[0].name} written; continue with "
                    f"`kdm train --resume {run}`")
    total = step + 7
    r = proc("train", "--resume", run, "--set", f"train.steps={total}")
    assert r.wait(timeout=120) == 0, r.communicate()
    ref = tmp_path / "ref"
    r = proc("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", ref,
             "--set", f"train.steps={total}", *common)
    assert r.wait(timeout=120) == 0, r.communicate()
    name = f"checkpoints/step-{total:08d}"
    for f in ("model.safetensors", "ema.safetensors", "state.pt"):
        assert contents(run / name)[f] == contents(ref / name)[f], f


def test_resume_extends_a_run_with_set_steps(tiny, ref30, tmp_path):
    run = tmp_path / "run"
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", run,
               "--set", "train.keep_checkpoints=3") == 0
    code, out, _ = kdm_run("train", "--resume", run, "--set", "train.steps=30")
    assert code == 0 and "step 30/30" in out
    assert read_json(run / "config.json") == read_json(ref30 / "config.json")
    a, b = contents(run), contents(ref30)
    assert [k for k in a if a[k] != b.get(k)] == [  # the copies of config.json from step 20 on
        "checkpoints/step-00000010/config.json", "checkpoints/step-00000020/config.json"]


def test_resume_of_a_finished_run_writes_nothing(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["kdm"], run)
    before = contents(run)
    code, out, err = kdm_run("train", "--resume", run)
    assert (code, err) == (0, "") and "step 20/20" in out
    assert contents(run) == before


def test_checkpoint_files_get_the_usual_permissions(tiny):
    mask = os.umask(0)
    os.umask(mask)
    for f in (tiny["kdm"] / "checkpoints").rglob("*"):
        if f.is_file():
            assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


def test_relative_paths_are_recorded_absolute(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    np.save(work / "points.npy", rng.normal(size=(600, 2)).astype(np.float32))
    p = proc("teacher", "train", "--preset", "checkerboard-tiny", "--out", "teacher",
             "--data", "points.npy", "--set", "teacher_train.steps=10", cwd=work)
    assert p.wait(timeout=120) == 0, p.communicate()
    cfg = read_json(work / "teacher" / "config.json")
    assert cfg["data"]["source"] == str(work / "points.npy")
    p = proc("teacher", "train", "--resume", work / "teacher", "--set",
             "teacher_train.steps=20", cwd=tmp_path)  # from another directory
    assert p.wait(timeout=120) == 0, p.communicate()


def test_a_closed_pipe_ends_quietly(tmp_path):
    p = proc("config", "--preset", "cifar10")
    p.stdout.close()  # the reader is gone before anything is written
    assert p.wait(timeout=60) == 141
    assert p.stderr.read() == ""


@pytest.mark.parametrize("exc, expect", [
    (OSError(13, "Permission denied", "/x/y"), "kdm: error: cannot access /x/y: Permission "
     "denied; check the path, its permissions and free space"),
    (MemoryError(), "kdm: error: out of memory (MemoryError); use a smaller --n"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 800000000000 bytes."),
     "kdm: error: out of memory ([enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator"),
])
def test_system_errors_become_one_line(monkeypatch, exc, expect):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_config", fail)
    code, _, err = kdm_run("config")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(expect)


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    def fail(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_config", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["config"])


@pytest.mark.parametrize("argv, hint", [
    (["train", "--preset", "checkerboard-tiny", "--pairs", "P", "--out", "R"],
     "continue with `kdm train --resume R`"),
    (["train", "--resume", "R"], "continue with `kdm train --resume R`"),
    (["teacher", "train", "--out", "T"], "continue with `kdm teacher train --resume T`"),
    (["pairs", "--teacher", "T", "--out", "S"],
     "rerun the same command to continue where it stopped"),
    (["sample", "R", "--n", "5", "--out", "s.npy"], "nothing was written; rerun the command"),
])
def test_interrupt_message_names_the_command_that_continues(monkeypatch, argv, hint):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    code, _, err = kdm_run(*argv)
    assert code == 130
    assert err == f"kdm: error: interrupted; {hint}\n"


def test_permission_problems_are_named(tiny, tmp_path, monkeypatch):
    """An unreadable file is reported as such, not as missing (root ignores file modes, so the
    denial is simulated)."""
    from koopman_distill import io as kio
    from koopman_distill.training import checkpoint as ckpt_module

    real = open

    def denied(path, *args, **kwargs):
        if str(path).endswith(("ema.safetensors", "run.json")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_module, "open", denied, raising=False)
    code, _, err = kdm_run("sample", tiny["kdm"], "--n", 3, "--out", tmp_path / "x.npy")
    assert code == 2 and "ema.safetensors: Permission denied" in err
    monkeypatch.setattr(kio, "open", denied, raising=False)
    code, _, err = kdm_run("sample", tiny["kdm"], "--n", 3, "--out", tmp_path / "x.npy")
    assert code == 2 and err.startswith("kdm: error: cannot read run metadata ")
    assert "run.json: Permission denied" in err


@pytest.mark.parametrize("command", ["pairs", "sample"])
def test_jobs_beyond_the_disk_fail_within_2_seconds_in_a_fresh_process(tiny, tmp_path, command):
    """As a user sees it: a new ``kdm`` process, the bytes needed and free in one line, no
    file written (the estimate comes before torch is imported)."""
    argv = (["pairs", "--teacher", tiny["teacher"], "--out", tmp_path / "store", "--n", "1e12"]
            if command == "pairs" else
            ["sample", tiny["kdm"], "--n", "1e15", "--out", tmp_path / "s.npy"])
    start = time.perf_counter()
    p = proc(*argv)
    _, err = p.communicate(timeout=60)
    assert time.perf_counter() - start < 2
    assert p.returncode == 2
    [line] = err.strip().splitlines()
    assert " TB (" in line and "bytes) on disk, " in line and f"bytes) free in {tmp_path}" in line
    assert list(tmp_path.iterdir()) == []
