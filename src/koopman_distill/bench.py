"""``kdm bench SUITE``: KDM against offline baselines and the teacher, measured in one run.

Every student (``kdm``, ``kd``, ``rectified``) trains on the same pair store with the suite's
train settings (steps, batch, seed) through the same trainer. All rows are scored by the one
evaluation path (:func:`~.evaluation.runs.evaluate_students`): the same held-out noise
(``eval.seed``) and labels, the same metric settings, throughput timed side by side by the one
timer, same device and threads. The teacher appears at NFE 1, 2, 4, 8, 16 (Euler on its own
time grid) and at its full NFE (the sampler that made the pairs); the rectified baseline at 1,
2 and 4 steps. Columns, the plotted metric and the quality check come from the data's domain
(and the checkerboard's extras on the checkerboard).

Writes ``bench.json``, ``bench.md`` and ``quality_vs_nfe.png`` under ``out``; stages under
``out`` (teacher, pairs, one run per method) are reused when complete, as in ``kdm demo``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .analysis import plots
from .api import make_pairs, train_kdm, train_teacher
from .config import BENCH_SUITES, PRESETS, Config, apply_overrides, preset
from .demo import run_stage
from .domains import domain_for
from .errors import KDMError
from .evaluation.extras import dataset_extras
from .evaluation.runs import evaluate_students
from .evaluation.table import fmt, markdown
from .io import atomic_write, write_json
from .protocols import Teacher

STUDENTS = ("kdm", "kd", "rectified")


def suite_presets(suite: str) -> list[str]:
    """The presets a suite can run: those on the same data as its default preset."""
    if suite not in BENCH_SUITES:
        raise KDMError(f"unknown bench suite {suite!r}; choose one of: {', '.join(BENCH_SUITES)}")
    source = preset(BENCH_SUITES[suite][0]).data.source
    return [name for name in PRESETS if preset(name).data.source == source]


def suite_config(suite: str, quick: bool = False, overrides: list[str] | None = None,
                 preset_name: str | None = None) -> Config:
    """The config a suite trains every method with: its default preset (``--quick``: its toy
    preset), or ``preset_name``, which must be on the suite's data."""
    names = suite_presets(suite)
    if preset_name is None:
        preset_name = BENCH_SUITES[suite][quick]
    elif quick:
        raise KDMError("--quick picks the suite's toy preset; drop --preset or --quick")
    elif preset_name not in names:
        raise KDMError(f"preset {preset_name!r} is not on the {suite} suite's data; "
                       f"choose one of: {', '.join(names)}")
    return apply_overrides(preset(preset_name), overrides or [])


def run_bench(suite: str, out: str | Path, quick: bool = False,
              overrides: list[str] | None = None, teacher: str | Path | Teacher | None = None,
              pairs: str | Path | None = None, preset_name: str | None = None
              ) -> dict[str, Any]:
    """Train the teacher (or reuse ``teacher``: a teacher run directory, or any
    :class:`~.protocols.Teacher` object), make pairs (or reuse ``pairs``), train every student,
    evaluate all side by side; returns the result written to ``out/bench.json``."""
    cfg = suite_config(suite, quick, overrides, preset_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if pairs is None:
        if teacher is None:
            teacher = out / "teacher"
            run_stage("teacher", teacher, cfg, lambda: train_teacher(cfg, teacher), timings)
        pairs = out / "pairs"
        print(f"[pairs] -> {pairs}")
        make_pairs(teacher, pairs, cfg, progress=cfg.train.progress)
    runs = {}
    for method in STUDENTS:
        mcfg = apply_overrides(cfg, [f"model.method={method}"])
        runs[method] = out / method
        run_stage(method, runs[method], mcfg,
                  lambda m=mcfg, r=runs[method]: train_kdm(m, pairs, r), timings)
    given = None if teacher is None or isinstance(teacher, (str, os.PathLike)) else teacher
    result = evaluate_students(runs, cfg, teacher=given)
    result["checks"] = checks(result)
    result.update(suite=suite, quick=quick, preset=cfg.preset, stage_seconds=timings,
                  pairs=str(Path(pairs).resolve()))
    result["plot"] = str(_plot(result, out / "quality_vs_nfe.png"))
    write_json(out / "bench.json", result)
    atomic_write(out / "bench.md", lambda p: Path(p).write_text(bench_markdown(result)))
    return result


# -- checks --------------------------------------------------------------------------------------
def checks(result: dict[str, Any]) -> dict[str, Any]:
    """The acceptance comparisons: KDM throughput against the teacher at full NFE, and KDM
    quality against KD (the domain's check, or the dataset's where it has its own)."""
    one = {r["method"]: r for r in result["rows"] if r["nfe"] == 1 and r["method"] != "teacher"}
    missing = [m for m in ("kdm", "kd") if m not in one]
    if missing:
        raise KDMError(f"the bench checks compare KDM with KD; no one-step {missing[0]} row")
    kdm, kd = one["kdm"], one["kd"]
    out: dict[str, Any] = {"kdm_speedup_vs_teacher": kdm["speedup_vs_teacher"]}
    out["speed_target_met"] = out["kdm_speedup_vs_teacher"] >= 10
    judge = dataset_extras(result["data"]) or domain_for(result["shape"])
    out.update(judge.quality_check(kdm, kd))
    return out


# -- reports -------------------------------------------------------------------------------------
def _plot(result: dict[str, Any], path: Path) -> Path:
    metric = result["metric"]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in result["rows"]:
        # "teacher (Euler x4)" -> "teacher (Euler)"; "KDM (1 step)" -> "KDM"
        name = (r["name"].split(" x")[0] + ")" if r["method"] == "teacher"
                else r["name"].split(" (")[0])
        series.setdefault(name, []).append((r["nfe"], r[metric]))
    label = domain_for(result["shape"]).headline_label
    return plots.quality_vs_nfe(series, label, path, title=f"bench {result['suite']}")


def bench_markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table plus the acceptance checks."""
    extras = dataset_extras(result["data"])
    columns = (*(extras.columns if extras else ()), *domain_for(result["shape"]).columns)
    lines = [("method", "params", "NFE", *(c.header for c in columns), "train (s)",
              "samples/s", "x teacher")]
    for r in result["rows"]:
        lines.append((r["name"], fmt(r["params"], ","), str(r["nfe"]),
                      *(c.cell(r) for c in columns), fmt(r["train_seconds"], ".0f"),
                      f"{r['samples_per_s']:,.0f}", f"{r['speedup_vs_teacher']:.1f}"))
    c = result["checks"]
    verdict = [f"- quality: {c['quality_check']}: {'met' if c['quality_target_met'] else 'MISSED'}",
               f"- speed: KDM one-step throughput = {c['kdm_speedup_vs_teacher']:.1f}x the "
               f"teacher's at full NFE (target >= 10): "
               f"{'met' if c['speed_target_met'] else 'MISSED'}"]
    s = result["settings"]
    return (f"## bench {result['suite']}{' (quick)' if result['quick'] else ''}\n\n"
            f"Preset `{result['preset']}`; every student: {s['train']['steps']} steps at batch "
            f"{s['train']['batch_size']}, seed {s['train']['seed']}; N = {s['n']} evaluation "
            f"samples; throughput on batches of {s['throughput_batch']}, {s['threads']} "
            f"threads, {s['device']}.\n\n" + markdown(lines) + "\n\n" + "\n".join(verdict)
            + "\n")
