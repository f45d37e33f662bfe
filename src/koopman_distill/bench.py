"""``kdm bench SUITE``: KDM against offline baselines and the teacher, measured in one run.

Every student (``kdm``, ``kd``, ``rectified``) trains on the same pair store with the suite's
train settings (steps, batch, seed) through the same trainer. All rows are scored by the one
evaluation path (:func:`~.evaluation.runs.evaluate_students`): the same held-out noise
(``eval.seed``) and labels, the same metric settings, throughput timed side by side by the one
timer, same device and threads. The teacher appears at NFE 1, 2, 4, 8, 16 (Euler on its own
time grid) and at its full NFE (the sampler that made the pairs); the rectified baseline at 1,
2 and 4 steps. Columns, the plotted metric and the quality check come from the data's domain
(and the checkerboard's extras on the checkerboard).

Ablations:

- ``adv``: which students get the adversarial term at the suite's ``model.w_adv``
  (:data:`ADV_MODES`). ``kdm`` (default): KDM only, as each method is defined; ``all``: every
  student (``KD + adv.``, ``rectified flow + adv.``); ``none``: no student (``KDM, no
  adv.``); ``both``: each student with and without, six in all. All but ``kdm`` need
  ``model.w_adv`` > 0. The quality check compares KDM with KD like for like (both with the
  term, or both without) where the bench has such a pair, and says which rows it compared.
- ``seeds``: every student trains ``seeds`` times, with ``train.seed`` = S, S + 1, ... (S the
  config's), on the same teacher and pairs, and is scored on the same noise. Rows then hold
  the mean over the seeds of every number, and ``per_seed`` in ``bench.json`` each row's
  per-seed values with their mean, sample standard deviation, min and max; ``bench.md`` shows
  mean ± std.

Writes ``bench.json``, ``bench.md`` and ``quality_vs_nfe.png`` under ``out``; stages under
``out`` (teacher, pairs, one run per student and seed) are reused when complete, as in ``kdm
demo``. A student's run is ``out/STUDENT`` for the first seed and ``out/STUDENT-seedN`` for
train seed N after it; STUDENT is its method (``kdm``, ``kd``, ``rectified``), with ``-adv`` /
``-noadv`` when it departs from the method's own (``kd-adv``, ``kdm-noadv``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import plots
from .api import make_pairs, train_kdm, train_teacher
from .config import BENCH_ADV, BENCH_SUITES, PRESETS, Config, apply_overrides, preset
from .demo import run_stage
from .domains import domain_for
from .errors import KDMError
from .evaluation.extras import dataset_extras
from .evaluation.runs import evaluate_students, result_columns
from .evaluation.table import Column, fmt, markdown
from .io import atomic_write, write_json
from .pairs import PairStore
from .protocols import Teacher
from .students import NAMES, student_label

STUDENTS = ("kdm", "kd", "rectified")


@dataclass(frozen=True)
class BenchStudent:
    """A student of the bench: ``method`` with (``adv``) or without the adversarial term."""

    method: str
    adv: bool

    @property
    def own(self) -> bool:
        """Whether this is the method as defined: KDM with its term, a baseline without."""
        return self.adv == (self.method == "kdm")

    @property
    def stage(self) -> str:
        """Its stage (run directory) name: ``kdm``, ``kd``, ``kdm-noadv``, ``kd-adv``."""
        return self.method if self.own else f"{self.method}-{'adv' if self.adv else 'noadv'}"

    @property
    def name(self) -> str:
        """Its display name: ``KDM``, ``KD``, ``KDM, no adv.``, ``KD + adv.``."""
        if self.own:
            return NAMES[self.method]
        return f"{NAMES[self.method]}{' + adv.' if self.adv else ', no adv.'}"


# --adv: the students of each mode (``kdm``: each method as defined; ``both``: with and without)
ADV_MODES = dict(zip(BENCH_ADV, (
    tuple(BenchStudent(m, m == "kdm") for m in STUDENTS),
    tuple(BenchStudent(m, True) for m in STUDENTS),
    tuple(BenchStudent(m, False) for m in STUDENTS),
    tuple(BenchStudent(m, a) for m in STUDENTS for a in (m == "kdm", m != "kdm"))), strict=True))


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


def bench_students(adv: str, w_adv: float) -> tuple[BenchStudent, ...]:
    """The students of ``--adv adv`` at the suite's adversarial weight ``w_adv``."""
    if adv not in ADV_MODES:
        raise KDMError(f"unknown --adv {adv!r}; choose one of: {', '.join(ADV_MODES)}")
    if adv != "kdm" and w_adv <= 0:
        raise KDMError(f"--adv {adv} sets the adversarial term at model.w_adv, which is 0 "
                       "here; give --set model.w_adv=W (the image presets use 0.01)")
    return ADV_MODES[adv]


def run_bench(suite: str, out: str | Path, quick: bool = False,
              overrides: list[str] | None = None, teacher: str | Path | Teacher | None = None,
              pairs: str | Path | None = None, preset_name: str | None = None,
              seeds: int = 1, adv: str = "kdm", teacher_data: bool = False) -> dict[str, Any]:
    """Train the teacher (or reuse ``teacher``: a teacher run directory, a spec such as
    ``diffusers:DIR``, or any :class:`~.protocols.Teacher` object), make pairs (or reuse
    ``pairs``), train every student of ``adv`` (:data:`ADV_MODES`) ``seeds`` times, evaluate
    all side by side; returns the result written to ``out/bench.json``. ``teacher_data``: the
    pairs' teacher, when its store does not record its data, learned the config's ``data.*``
    (scored against those real images), as in :func:`~.api.train_kdm`."""
    cfg = suite_config(suite, quick, overrides, preset_name)
    if type(seeds) is not int or seeds < 1:
        raise KDMError(f"--seeds must be a positive integer, got {seeds!r}")
    students = bench_students(adv, cfg.model.w_adv)
    train_seeds = [cfg.train.seed + i for i in range(seeds)]
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
    teacher_data = teacher_data and not PairStore(pairs).manifest.get("config")
    runs: dict[str, Path] = {}
    names: dict[str, str] = {}
    member: dict[str, BenchStudent] = {}  # run key -> its student
    for seed in train_seeds:  # all students of one seed, then the next
        for s in students:
            key = s.stage if seed == train_seeds[0] else f"{s.stage}-seed{seed}"
            scfg = apply_overrides(cfg, [f"model.method={s.method}", f"train.seed={seed}",
                                         f"model.w_adv={cfg.model.w_adv if s.adv else 0.0!r}"])
            runs[key], member[key] = out / key, s
            names[key] = s.name if seeds == 1 else f"{s.name}, seed {seed}"
            run_stage(key, runs[key], scfg,
                      lambda c=scfg, r=runs[key]: train_kdm(c, pairs, r, teacher_data),
                      timings)
    given = None if teacher is None or isinstance(teacher, (str, os.PathLike)) else teacher
    order = sorted(runs, key=lambda k: students.index(member[k]))  # rows by student
    result = evaluate_students({k: runs[k] for k in order}, cfg, teacher=given, names=names)
    result = by_student(result, {k: member[k] for k in order})
    result["checks"] = checks(result)
    result.update(suite=suite, quick=quick, preset=cfg.preset, adv=adv, seeds=seeds,
                  stage_seconds=timings, pairs=str(Path(pairs).resolve()))
    result["plot"] = str(_plot(result, out / "quality_vs_nfe.png"))
    write_json(out / "bench.json", result)
    atomic_write(out / "bench.md", lambda p: Path(p).write_text(bench_markdown(result)))
    return result


# -- seeds ---------------------------------------------------------------------------------------
IDENTITY = ("method", "name", "nfe", "params", "student")  # row fields that are no measurement


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``values`` (one per seed) with their mean, sample standard deviation (ddof 1; NaN for
    one value), min and max."""
    v = np.asarray(values, dtype=np.float64)
    return {"values": [float(x) for x in v], "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "min": float(v.min()), "max": float(v.max())}


def by_student(result: dict[str, Any], member: dict[str, BenchStudent]) -> dict[str, Any]:
    """``result`` of :func:`~.evaluation.runs.evaluate_students` on the runs of ``member``
    (run key -> its student), with ``students`` keyed by student (its runs and train seeds in
    order); where a student has several runs (seeds), one row per student and step count
    holding the means over its runs, and ``per_seed``: that row's name -> every measured
    field -> :func:`spread` of its per-seed values."""
    about, merged = result["students"], {}
    for key, s in member.items():
        m = merged.setdefault(s.stage, {"method": s.method, "name": s.name,
                                        "w_adv": about[key]["w_adv"], "runs": [],
                                        "train_seeds": []})
        m["runs"].append(about[key]["run"])
        m["train_seeds"].append(about[key]["train_seed"])
    result["students"] = merged
    if all(len(m["runs"]) == 1 for m in merged.values()):
        return result
    slots: list[Any] = []  # a teacher row, or the (student, NFE) key of a group of rows
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        if "student" not in r:
            slots.append(r)
            continue
        key = (member[r["student"]].stage, r["nfe"])
        if key not in groups:
            slots.append(key)
        groups.setdefault(key, []).append(r)
    rows, per_seed = [], {}
    for slot in slots:
        if isinstance(slot, dict):
            rows.append(slot)
            continue
        group, (stage, nfe) = groups[slot], slot
        name = student_label(group[0]["method"], nfe, merged[stage]["name"])
        fields = {k: spread([r[k] for r in group]) for k, v in group[0].items()
                  if k not in IDENTITY and isinstance(v, (int, float))
                  and not isinstance(v, bool)}
        rows.append({**group[0], "name": name, "student": stage,
                     **{k: f["mean"] for k, f in fields.items()}})
        per_seed[name] = {"train_seeds": merged[stage]["train_seeds"], **fields}
    result.update(rows=rows, per_seed=per_seed)
    return result


# -- checks --------------------------------------------------------------------------------------
def checks(result: dict[str, Any]) -> dict[str, Any]:
    """The acceptance comparisons: KDM throughput against the teacher at full NFE, and KDM
    quality against KD (the domain's check, or the dataset's where it has its own) on one-step
    rows (means, with several seeds). Quality is compared like for like, both students with
    the adversarial term or both without, for each such pair the bench has, else the first KDM
    with the first KD; ``quality_comparisons`` holds each comparison, the top-level quality
    fields the first."""
    one = {r["student"]: r for r in result["rows"] if r["nfe"] == 1 and "student" in r}
    students = result["students"]
    kdms, kds = ([k for k, s in students.items() if s["method"] == m and k in one]
                 for m in ("kdm", "kd"))
    if not (kdms and kds):
        raise KDMError("the bench checks compare KDM with KD; no one-step "
                       f"{'kdm' if not kdms else 'kd'} row")
    adv = {k: students[k]["w_adv"] > 0 for k in (*kdms, *kds)}
    pairs = [(a, b) for a in kdms for b in kds if adv[a] == adv[b]] or [(kdms[0], kds[0])]
    judge = dataset_extras(result["data"]) or domain_for(result["shape"])
    per_seed = result.get("per_seed", {})
    comparisons = []
    for a, b in pairs:
        same = adv[a] == adv[b]
        how = ("like for like" if same else "not like for like: the adversarial term only in "
               + students[a if adv[a] else b]["name"])
        q = judge.quality_check(one[a], one[b])
        comparisons.append({**q, "compares": [one[a]["name"], one[b]["name"]],
                            "like_for_like": same, "quality_check":
                            f"{one[a]['name']} vs {one[b]['name']} ({how}): {q['quality_check']}"})
        if per_seed:  # the same comparison seed by seed: KDM and KD of one train seed
            qs = [judge.quality_check(*(_seed_row(per_seed[one[k]["name"]], i) for k in (a, b)))
                  for i in range(len(per_seed[one[a]["name"]]["train_seeds"]))]
            comparisons[-1]["per_seed"] = {
                k: spread([x[k] for x in qs]) for k, v in qs[0].items()
                if isinstance(v, float)}
    out: dict[str, Any] = {"kdm_speedup_vs_teacher": one[kdms[0]]["speedup_vs_teacher"]}
    out["speed_target_met"] = out["kdm_speedup_vs_teacher"] >= 10
    out.update(comparisons[0])
    out["quality_comparisons"] = comparisons
    return out


def _seed_row(spreads: dict[str, Any], i: int) -> dict[str, Any]:
    """Seed ``i``'s values of a row's ``per_seed`` entry."""
    return {k: f["values"][i] for k, f in spreads.items() if k != "train_seeds"}


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


def _cell(column: Column, row: dict[str, Any], spread: dict[str, Any] | None) -> str:
    """The row's value, with ``± std`` over seeds where it has a spread."""
    text = column.cell(row)
    if spread and column.key in spread and text != "-":
        text += f" ± {fmt(spread[column.key]['std'], column.spec)}"
    return text


def bench_markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table plus the acceptance checks."""
    columns = result_columns(result)
    per_seed = result.get("per_seed", {})
    lines = [("method", "params", "NFE", *(c.header for c in columns), "train (s)",
              "samples/s", "x teacher")]
    for r in result["rows"]:
        lines.append((r["name"], fmt(r["params"], ","), str(r["nfe"]),
                      *(_cell(c, r, per_seed.get(r["name"])) for c in columns),
                      fmt(r["train_seconds"], ".0f"), f"{r['samples_per_s']:,.0f}",
                      f"{r['speedup_vs_teacher']:.1f}"))
    c = result["checks"]
    verdict = [f"- quality: {q['quality_check']}: {'met' if q['quality_target_met'] else 'MISSED'}"
               + "".join(f"; per seed {k} {f['min']:.4g} to {f['max']:.4g}"
                         for k, f in q.get("per_seed", {}).items())
               for q in c["quality_comparisons"]]
    verdict.append(f"- speed: KDM one-step throughput = {c['kdm_speedup_vs_teacher']:.1f}x the "
                   f"teacher's at full NFE (target >= 10): "
                   f"{'met' if c['speed_target_met'] else 'MISSED'}")
    s = result["settings"]
    seeds = next(iter(per_seed.values()))["train_seeds"] if per_seed else [s["train"]["seed"]]
    trained = (f"seed {seeds[0]}" if len(seeds) == 1 else
               f"seeds {', '.join(map(str, seeds))} (student rows: mean ± sample std over the "
               f"{len(seeds)} seeds; the checks compare means)")
    return (f"## bench {result['suite']}{' (quick)' if result['quick'] else ''}\n\n"
            f"Preset `{result['preset']}`; every student: {s['train']['steps']} steps at batch "
            f"{s['train']['batch_size']}, {trained}; N = {s['n']} evaluation samples; "
            f"throughput on batches of {s['throughput_batch']}, {s['threads']} threads, "
            f"{s['device']}.\n\n" + markdown(lines) + "\n\n" + "\n".join(verdict) + "\n")
