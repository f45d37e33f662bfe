"""Shared fixtures: a tiny trained pipeline built once per session."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from koopman_distill.cli import main

torch.set_num_threads(2)


def kdm(*args: str) -> int:
    """Run the CLI in-process; returns the exit code."""
    return main([str(a) for a in args])


def kdm_proc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess (for exit codes, stderr and kills)."""
    return subprocess.run([sys.executable, "-m", "koopman_distill.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """teacher -> pairs -> KDM with the checkerboard-tiny preset."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {"teacher": root / "teacher", "pairs": root / "pairs", "kdm": root / "kdm"}
    assert kdm("teacher", "train", "--preset", "checkerboard-tiny", "--out",
               paths["teacher"]) == 0
    assert kdm("pairs", "--teacher", paths["teacher"], "--out", paths["pairs"]) == 0
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", paths["pairs"], "--out",
               paths["kdm"]) == 0
    return paths


def read_json(path: Path):
    return json.loads(Path(path).read_text())
