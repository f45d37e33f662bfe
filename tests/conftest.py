"""Shared fixtures: a tiny trained pipeline built once per session."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from koopman_distill.cli import main

# pytest-xdist runs a worker per core: each computes with one thread, as 2 threads would
# oversubscribe the cores the workers share
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def kdm(*args: str) -> int:
    """Run the CLI in-process; returns the exit code."""
    return main([str(a) for a in args])


class CLIResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def kdm_run(*args: object) -> CLIResult:
    """Run the CLI in-process with its output captured (exit code, stdout, stderr): what
    :func:`kdm_proc` checks, without the cost of a fresh process importing torch."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # --help, --version
            code = e.code
    return CLIResult(code, out.getvalue(), err.getvalue())


def kdm_proc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (for the installed entry point, signals and kills)."""
    return subprocess.run([sys.executable, "-m", "koopman_distill.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """teacher -> pairs -> KDM with the checkerboard-tiny preset."""
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def make_tiny(root: Path) -> dict[str, Path]:
    """Build teacher -> pairs -> KDM with the checkerboard-tiny preset under ``root``."""
    paths = {"teacher": root / "teacher", "pairs": root / "pairs", "kdm": root / "kdm"}
    assert kdm("teacher", "train", "--preset", "checkerboard-tiny", "--out",
               paths["teacher"]) == 0
    assert kdm("pairs", "--teacher", paths["teacher"], "--out", paths["pairs"]) == 0
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", paths["pairs"], "--out",
               paths["kdm"]) == 0
    return paths


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    """A folder holding a class-conditional digits8 pipeline (:func:`make_digits8`), with the
    module's own evaluation cache (``KDM_CACHE``) in it."""
    root = tmp_path_factory.mktemp("digits8")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDM_CACHE", str(root / "cache"))
    make_digits8(root)
    yield root
    mp.undo()


def make_digits8(root: Path) -> Path:
    """A class-conditional digits8 pipeline under ``root`` (teacher ``t``, pairs ``p``, KDM
    ``k``, no periodic evaluation); returns the KDM run."""
    assert kdm("teacher", "train", "--preset", "digits8", "--out", root / "t") == 0
    assert kdm("pairs", "--teacher", root / "t", "--out", root / "p") == 0
    assert kdm("train", "--preset", "digits8", "--pairs", root / "p", "--out", root / "k",
               "--set", "train.eval_every=0") == 0
    return root / "k"


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def contents(root: Path) -> dict[str, object]:
    """Every file under ``root`` by relative path, comparable with ``==``: bytes;
    ``log.jsonl`` rows without wall times; not the record of the commands run."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir() or p.name == "commands.jsonl":
            continue
        rel = str(p.relative_to(root))
        if p.name == "log.jsonl":
            rows = [json.loads(line) for line in p.read_text().splitlines()]
            out[rel] = [{k: v for k, v in r.items() if k != "time"} for r in rows]
        else:
            out[rel] = p.read_bytes()
    return out



def assert_pairs_resume_bitwise(args: list[str], tmp: Path) -> None:
    """``kdm *args --out STORE`` killed after its first shard (the later shards' files gone,
    the manifest listing the first alone) and rerun makes the store an uninterrupted run
    makes, byte for byte."""
    assert kdm(*args, "--out", tmp / "whole") == 0
    assert kdm(*args, "--out", tmp / "cut") == 0
    m = json.loads((tmp / "cut" / "manifest.json").read_text())
    for shard in m["shards"][1:]:
        for f in shard["files"].values():
            (tmp / "cut" / f).unlink()
    m["shards"], m["complete"] = m["shards"][:1], False
    (tmp / "cut" / "manifest.json").write_text(json.dumps(m))
    assert kdm(*args, "--out", tmp / "cut") == 0
    for f in (tmp / "whole").iterdir():
        assert f.read_bytes() == (tmp / "cut" / f.name).read_bytes(), f.name
