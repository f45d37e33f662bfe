"""``kdm bench SUITE``: KDM against offline baselines and the teacher, measured in one run.

Every student (``kdm``, ``kd``, ``rectified``) trains on the same pair store with the suite's
train settings (steps, batch, seed) through the same trainer. All rows are scored on the same
held-out noise (``eval.seed``) and labels with the same metric settings, and their sampling
throughput is timed side by side: one batch of ``eval.batch_size`` after a warm-up, same
device and threads. The teacher appears at NFE 1, 2, 4, 8, 16 (Euler on its own time grid) and
at its full NFE (the sampler that made the pairs); the rectified baseline at 1, 2 and 4 steps.

Writes ``bench.json``, ``bench.md`` and ``quality_vs_nfe.png`` under ``out``; stages under
``out`` (teacher, pairs, one run per method) are reused when complete, as in ``kdm demo``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import plots
from .api import OneStepGenerator, make_pairs, train_kdm, train_teacher
from .config import BENCH_SUITES, PRESETS, Config, apply_overrides, preset
from .demo import _markdown, run_stage
from .errors import KDMError
from .io import atomic_write, write_json
from .pairs import PairStore
from .students import param_count, sampling_path_params, student_label
from .teachers import store_teacher
from .training.trainer import read_log

STUDENTS = ("kdm", "kd", "rectified")
TEACHER_NFES = (1, 2, 4, 8, 16)
Sampler = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


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
              overrides: list[str] | None = None, teacher: str | Path | None = None,
              pairs: str | Path | None = None, preset_name: str | None = None
              ) -> dict[str, Any]:
    """Train the teacher (or reuse ``teacher``), make pairs (or reuse ``pairs``), train every
    student, evaluate all side by side; returns the result written to ``out/bench.json``."""
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
    result = evaluate_students(runs, cfg)
    result.update(suite=suite, quick=quick, preset=cfg.preset, stage_seconds=timings,
                  pairs=str(Path(pairs).resolve()))
    result["plot"] = str(_plot(result, out / "quality_vs_nfe.png"))
    write_json(out / "bench.json", result)
    atomic_write(out / "bench.md", lambda p: Path(p).write_text(bench_markdown(result)))
    return result


# -- evaluation ----------------------------------------------------------------------------------
def _batched(fn: Sampler, noise: torch.Tensor, labels: torch.Tensor | None, bs: int,
             device: torch.device) -> np.ndarray:
    parts = []
    with torch.no_grad():
        for i in range(0, len(noise), bs):
            y = None if labels is None else labels[i:i + bs].to(device)
            parts.append(fn(noise[i:i + bs].to(device), y).float().cpu().numpy())
    return np.concatenate(parts)


def _throughput(fn: Sampler, noise: torch.Tensor, labels: torch.Tensor | None,
                device: torch.device, repeats: int = 3) -> float:
    """Samples/s of one batch ``noise``: the fastest of ``repeats`` timed calls after a
    warm-up call (the minimum is the least disturbed by other work on the machine)."""
    x = noise.to(device)
    y = None if labels is None else labels.to(device)
    best = float("inf")
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - t)
    return len(x) / best


def _train_seconds(run: Path) -> float:
    """The trainer's own wall time for the run (stays right when the stage was reused)."""
    rows = [r for r in read_log(run / "log.jsonl") if "time" in r]
    return float(rows[-1]["time"]) if rows else float("nan")


def _teacher_samplers(meta: dict[str, Any], store: PairStore, device: torch.device
                      ) -> tuple[list[tuple[int, str, Sampler]], torch.nn.Module]:
    """(NFE, label, sampler) for the teacher at low NFE (Euler) and at the pairs' sampler."""
    teacher = store_teacher(store, device)
    if teacher is None:
        raise KDMError(f"the teacher of pair store {store.path} is not on this machine; bench "
                       "needs it for the teacher rows")
    rows = [(teacher.nfe(k, "euler"), f"teacher (Euler x{k})",
             lambda x, y, k=k: teacher.sample(x, y, steps=k, solver="euler"))
            for k in TEACHER_NFES]
    own = teacher.identity()["sampler"]
    rows.append((teacher.nfe(), f"teacher ({own['method'].capitalize()} x{own['steps']})",
                 lambda x, y: teacher.sample(x, y)))
    return rows, teacher


def _student_samplers(method: str, gen: OneStepGenerator) -> list[tuple[int, str, Sampler]]:
    return [(k, student_label(method, k), lambda x, y, k=k: gen.model.sample(x, y, steps=k))
            for k in gen.model.sampling_steps]


def evaluate_students(runs: dict[str, Path], cfg: Config) -> dict[str, Any]:
    """Score the teacher and every student run on the same noise; a list of rows plus
    settings and the acceptance checks."""
    ecfg = cfg.eval
    gens = {m: OneStepGenerator.load(r, device=cfg.train.device) for m, r in runs.items()}
    first = gens[STUDENTS[0]]
    device, meta = first.device, first.meta
    store = PairStore(meta["pairs"])
    noise, labels = first.noise(ecfg.n, ecfg.seed), first.labels(ecfg.n, ecfg.seed)
    bs = ecfg.batch_size if len(meta["shape"]) == 3 else min(ecfg.n, 10_000)
    teacher_rows, teacher = _teacher_samplers(meta, store, device)
    entries: list[tuple[str, int, str, Sampler, int, float]] = [
        ("teacher", nfe, label, fn, param_count(teacher, ()), float("nan"))
        for nfe, label, fn in teacher_rows]
    for m, gen in gens.items():
        entries += [(m, nfe, label, fn, sampling_path_params(gen.model),
                     _train_seconds(runs[m])) for nfe, label, fn in _student_samplers(m, gen)]
    score = _image_scorer(cfg, device, labels) if len(meta["shape"]) == 3 else _points_scorer(
        cfg, meta, teacher, teacher_rows[-1][2], device)
    target = _batched(teacher_rows[-1][2], noise, labels, bs, device)
    rows = []
    for method, nfe, label, fn, params, train_s in entries:
        print(f"[bench] {label}")
        samples = target if fn is teacher_rows[-1][2] else _batched(fn, noise, labels, bs,
                                                                   device)
        rows.append({"method": method, "label": label, "nfe": nfe, "params": params,
                     "train_seconds": train_s, **score(samples, target),
                     "samples_per_s": _throughput(fn, noise[:bs], None if labels is None
                                                  else labels[:bs], device)})
    full = rows[len(teacher_rows) - 1]  # the teacher's own sampler (its NFE may repeat)
    for r in rows:
        r["speedup_vs_teacher"] = r["samples_per_s"] / full["samples_per_s"]
    return {"rows": rows, "metric": "fd" if len(meta["shape"]) == 3 else "sliced_wasserstein",
            "checks": _checks(rows, len(meta["shape"]) == 3),
            "settings": {**dataclasses.asdict(ecfg), "throughput_batch": bs,
                         "threads": torch.get_num_threads(), "device": str(device),
                         "train": dataclasses.asdict(cfg.train)}}


def _points_scorer(cfg: Config, meta: dict[str, Any], teacher: Any, full: Sampler,
                   device: torch.device) -> Callable[[np.ndarray, np.ndarray], dict]:
    from .metrics.twod import evaluate_2d

    ecfg = cfg.eval
    g = torch.Generator().manual_seed(ecfg.reference_seed)
    ref_noise = meta["sigma_max"] * torch.randn(ecfg.n, *meta["shape"], generator=g)
    reference = _batched(full, ref_noise, None, ecfg.n, device)

    def score(samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
        res = evaluate_2d(samples, reference=reference, paired_target=target,
                          projections=ecfg.projections, seed=ecfg.seed, energy_n=ecfg.energy_n)
        return {k: res[k] for k in ("inside_fraction", "sliced_wasserstein", "energy_distance",
                                    "paired_sq_error_per_sample")}
    return score


def _image_scorer(cfg: Config, device: torch.device, labels: torch.Tensor | None
                  ) -> Callable[[np.ndarray, np.ndarray], dict]:
    from .evaluate_images import classifier_for, image_scores, reference_images
    from .metrics.extractors import build_extractor
    from .metrics.images import extract_features

    ecfg = cfg.eval
    clf = classifier_for(cfg, progress=cfg.train.progress) if (
        ecfg.extractor == "classifier" or labels is not None) else None
    extractor = clf if ecfg.extractor == "classifier" else build_extractor(
        ecfg.extractor, ecfg.extractor_weights or None,
        **({"resolution": ecfg.effnet_resolution} if ecfg.extractor == "effnet" else {}))
    extractor = extractor.to(device)
    reference, _ = reference_images(cfg, ecfg.n)
    ref_feats = extract_features(extractor, reference, batch_size=ecfg.batch_size)

    def score(samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
        res = {**image_scores(extractor, samples, ref_feats, ecfg),
               "paired_mse": float(np.mean((samples - target) ** 2))}
        if labels is not None:
            res["class_accuracy"] = float(np.mean(clf.predict(samples) == labels.numpy()))
        return res
    return score


def _checks(rows: list[dict[str, Any]], images: bool) -> dict[str, Any]:
    """The acceptance comparisons: KDM quality against KD, KDM throughput against the
    teacher at full NFE."""
    one = {r["method"]: r for r in rows if r["nfe"] == 1 and r["method"] != "teacher"}
    kdm, kd = one["kdm"], one["kd"]
    checks: dict[str, Any] = {"kdm_speedup_vs_teacher": kdm["speedup_vs_teacher"]}
    checks["speed_target_met"] = checks["kdm_speedup_vs_teacher"] >= 10
    if images:
        checks["kdm_fd_over_kd_fd"] = kdm["fd"] / kd["fd"]
        checks["quality_target_met"] = checks["kdm_fd_over_kd_fd"] <= 0.6
    else:
        checks["kdm_inside_minus_kd_inside"] = kdm["inside_fraction"] - kd["inside_fraction"]
        checks["quality_target_met"] = checks["kdm_inside_minus_kd_inside"] >= 0
    return checks


# -- reports -------------------------------------------------------------------------------------
def _plot(result: dict[str, Any], path: Path) -> Path:
    metric = result["metric"]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in result["rows"]:
        # "teacher (Euler x4)" -> "teacher (Euler)"; "KDM (1 step)" -> "KDM"
        name = (r["label"].split(" x")[0] + ")" if r["method"] == "teacher"
                else r["label"].split(" (")[0])
        series.setdefault(name, []).append((r["nfe"], r[metric]))
    label = {"fd": "Fréchet distance", "sliced_wasserstein": "sliced W1"}[metric]
    return plots.quality_vs_nfe(series, label, path, title=f"bench {result['suite']}")


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def bench_markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table plus the acceptance checks."""
    images = result["metric"] == "fd"
    head = ["method", "params", "NFE"]
    head += (["FD", "KID", "class acc.", "paired MSE"] if images else
             ["inside squares", "sliced W1", "energy", "paired sq. err"])
    head += ["train (s)", "samples/s", "x teacher"]
    lines = [tuple(head)]
    for r in result["rows"]:
        q = ([_fmt(r["fd"], ".3f"), _fmt(r["kid"], ".4f"), _fmt(r.get("class_accuracy"), ".3f"),
              _fmt(r["paired_mse"], ".4f")] if images else
             [_fmt(r["inside_fraction"], ".4f"), _fmt(r["sliced_wasserstein"], ".4f"),
              _fmt(r["energy_distance"], ".5f"), _fmt(r["paired_sq_error_per_sample"], ".2e")])
        lines.append((r["label"], f"{r['params']:,}", str(r["nfe"]), *q,
                      _fmt(r["train_seconds"], ".0f"), f"{r['samples_per_s']:,.0f}",
                      f"{r['speedup_vs_teacher']:.1f}"))
    c = result["checks"]
    quality = (f"KDM FD / KD FD = {c['kdm_fd_over_kd_fd']:.3f} (target <= 0.6)" if images else
               f"KDM inside - KD inside = {c['kdm_inside_minus_kd_inside']:+.4f} (target >= 0)")
    verdict = [f"- quality: {quality}: {'met' if c['quality_target_met'] else 'MISSED'}",
               f"- speed: KDM one-step throughput = {c['kdm_speedup_vs_teacher']:.1f}x the "
               f"teacher's at full NFE (target >= 10): "
               f"{'met' if c['speed_target_met'] else 'MISSED'}"]
    s = result["settings"]
    return (f"## bench {result['suite']}{' (quick)' if result['quick'] else ''}\n\n"
            f"Preset `{result['preset']}`; every student: {s['train']['steps']} steps at batch "
            f"{s['train']['batch_size']}, seed {s['train']['seed']}; N = {s['n']} evaluation "
            f"samples; throughput on batches of {s['throughput_batch']}, {s['threads']} "
            f"threads, {s['device']}.\n\n" + _markdown(lines) + "\n\n" + "\n".join(verdict)
            + "\n")

