"""What the benchmark scripts share: running ``kdm`` in-process, and training a student run
that is reused when complete and resumed when interrupted."""

from __future__ import annotations

from pathlib import Path

from koopman_distill.cli import main as kdm
from koopman_distill.io import read_json
from koopman_distill.training.checkpoint import latest_checkpoint, step_of


def run(*args: object) -> None:
    """``kdm ARGS`` in this process; a failure stops the benchmark."""
    if kdm([str(a) for a in args]) != 0:
        raise SystemExit(f"kdm {' '.join(map(str, args))} failed")


def train(student: Path, *args: object) -> None:
    """``kdm train --out student ARGS``, unless the run is complete; an interrupted run is
    resumed."""
    if not (student / "run.json").exists():
        run("train", "--out", student, *args)
        return
    ckpt = latest_checkpoint(student)
    if ckpt is None or step_of(ckpt) < read_json(student / "config.json")["train"]["steps"]:
        run("train", "--resume", student)
