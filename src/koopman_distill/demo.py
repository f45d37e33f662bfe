"""``kdm demo``: the whole pipeline for a preset (default: the checkerboard), with a results
table at the end.

Each stage lives in its own directory under ``out`` and is reused when already complete (or
resumed when interrupted), so a second run only re-evaluates.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .api import make_pairs, read_run, resume_run, train_kdm, train_teacher
from .config import Config
from .errors import KDMError
from .evaluation.runs import evaluate_run, result_columns
from .evaluation.table import markdown
from .students import KDM_LOSS_FIELDS
from .training.checkpoint import latest_checkpoint, step_of

# The config sections that decide a stage's result: other settings (evaluation, say) may
# change between runs without invalidating it, and so may the trainer's bookkeeping fields.
STAGE_SECTIONS = {"teacher": ("data", "teacher", "teacher_train"),
                  "kdm": ("data", "teacher", "teacher_train", "pairs", "model", "train")}
BOOKKEEPING = ("progress", "log_every", "eval_every", "ckpt_every", "keep_checkpoints",
               "max_nonfinite", "prefetch")


def _result_settings(cfg: Config, kind: str) -> dict[str, Any]:
    """``{"section.field": value}`` of the settings that decide a ``kind`` stage's result."""
    ignored = {f"train.{name}" for name in BOOKKEEPING}
    ignored |= {f"teacher_train.{name}" for name in BOOKKEEPING}
    if kind == "kdm" and cfg.model.method != "kdm":
        ignored |= {f"model.{name}" for name in KDM_LOSS_FIELDS}
    if kind == "kdm" and cfg.model.w_adv == 0:  # no critic
        ignored.add("model.disc_channels")
    return {f"{section}.{name}": value
            for section in STAGE_SECTIONS[kind]
            for name, value in dataclasses.asdict(getattr(cfg, section)).items()
            if f"{section}.{name}" not in ignored}


def _finished(run: Path, want: Config) -> bool:
    if not (run / "run.json").exists():
        return False
    cfg, meta = read_run(run)
    have, need = _result_settings(cfg, meta["kind"]), _result_settings(want, meta["kind"])
    differ = [k for k in have if k in need and have[k] != need[k]]  # model.method is in both
    if differ:
        sections = sorted({k.split(".")[0] for k in differ}, key=STAGE_SECTIONS["kdm"].index)
        changes = ", ".join(f"{k} {have[k]!r} -> {need[k]!r}" for k in differ[:4])
        raise KDMError(f"{run} was made with other {', '.join(sections)} settings than these "
                       f"({changes}); pick another --out or delete it")
    steps = cfg.teacher_train.steps if meta["kind"] == "teacher" else cfg.train.steps
    ckpt = latest_checkpoint(run)
    return ckpt is not None and step_of(ckpt) >= steps


def run_stage(name: str, run: Path, cfg: Config, start: Any, timings: dict[str, float]) -> None:
    """Run ``start()`` for stage ``name`` into ``run`` unless it is complete (reuse) or
    interrupted (resume); its wall time goes into ``timings[name]``."""
    t = time.perf_counter()
    if _finished(run, cfg):
        print(f"[{name}] reusing {run}")
    elif (run / "run.json").exists():
        print(f"[{name}] resuming {run}")
        resume_run(run)
    else:
        print(f"[{name}] -> {run}")
        start()
    timings[name] = time.perf_counter() - t


def run_demo(cfg: Config, out: str | Path) -> dict[str, Any]:
    """Teacher -> pairs -> KDM -> eval under ``out``; returns the evaluation with timings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    run_stage("teacher", out / "teacher", cfg, lambda: train_teacher(cfg, out / "teacher"), timings)
    t = time.perf_counter()
    print(f"[pairs] -> {out / 'pairs'}")
    make_pairs(out / "teacher", out / "pairs", cfg, progress=cfg.train.progress)
    timings["pairs"] = time.perf_counter() - t
    run_stage("kdm", out / "kdm", cfg, lambda: train_kdm(cfg, out / "pairs", out / "kdm"), timings)
    t = time.perf_counter()
    result = evaluate_run(out / "kdm")
    timings["eval"] = time.perf_counter() - t
    result["timings"] = timings
    return result


def results_table(result: dict[str, Any]) -> str:
    """A Markdown table of the teacher and the student of an evaluation result, with the
    columns of its domain (and of its dataset's extras) and the stages' wall times."""
    timings = result.get("timings", {})
    columns = result_columns(result)
    rows = [("method", "NFE", *(c.header for c in columns), "samples/s", "train wall (s)")]
    for name, key, stage in (("teacher", "teacher", "teacher"), (None, "student", "kdm")):
        r = result.get(key)
        if r is None:
            continue
        cells = ("-" if key == "teacher" and c.paired else c.cell(r, with_se=True)
                 for c in columns)  # the teacher's outputs are the paired targets
        rows.append((name or r["name"], str(r["nfe"]), *cells, f"{r['samples_per_s']:,.0f}",
                     f"{timings[stage]:.0f}" if stage in timings else "-"))
    return markdown(rows)
