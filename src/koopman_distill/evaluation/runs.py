"""The candidates of student runs and their teacher, evaluated by :func:`.core.evaluate`.

``kdm eval`` / ``kdm demo`` (:func:`evaluate_run`): one student run against its teacher at the
sampler that made its pairs. ``kdm bench`` (:func:`evaluate_students`): several student runs
on one pair store, with the teacher at NFE 1, 2, 4, 8, 16 (Euler) and at its pairs' sampler,
and a multi-step student (rectified) at 1, 2 and 4 steps.

Protocol: ``eval.n`` noise examples from seed ``eval.seed`` (disjoint from the pair seeds, so
the teacher's outputs on them are held-out pairs; conditional runs: uniform labels from the
same seed). Every candidate maps them and is scored against one reference (the domain's:
fresh teacher samples or real data), so the teacher's own score is the floor a perfect student
could reach. The student's paired error is also measured on its own training pairs
(``train_pairs_*``): far below the held-out one, it says the student fits its pairs and errs
between them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import plots
from ..api import StudentRun, data_source
from ..config import Config, EvalConfig
from ..domains import domain_for
from ..errors import KDMError
from ..io import write_json
from ..models.koopman import spectra
from ..pairs import PairStore
from ..protocols import Decoder, Teacher
from ..students import param_count, student_label, student_name
from ..teachers import store_teacher
from ..training.trainer import read_log
from .core import Candidate, Shown, draw, evaluate
from .extras import dataset_extras
from .table import Column

TEACHER_NFES = (1, 2, 4, 8, 16)  # the teacher's Euler rows in bench
SOLVER_NAMES = {"ddim": "DDIM", "dpm++2m": "DPM++ 2M"}  # display names, else capitalised


def solver_name(method: str) -> str:
    """A sampler's display name: ``heun-karras`` -> ``Heun``, ``ddim`` -> ``DDIM``."""
    base = method.split("-")[0]
    return SOLVER_NAMES.get(base, base.capitalize())


def result_columns(result: Mapping[str, Any]) -> tuple[Column, ...]:
    """The metric columns of an evaluation or bench ``result``: its dataset's extras', then its
    domain's for the settings it was measured with."""
    extras = dataset_extras(result.get("data"))
    return (*(extras.columns if extras else ()),
            *domain_for(result["shape"]).table_columns(result.get("settings", {})))


# -- candidates -----------------------------------------------------------------------------
def _params(module: Any) -> int | None:
    return param_count(module, ()) if isinstance(module, torch.nn.Module) else None


def teacher_candidates(teacher: Teacher, store: PairStore | None,
                       euler: Sequence[int] = TEACHER_NFES) -> list[Candidate]:
    """The teacher with Euler at each NFE in ``euler``, then (last) at its own sampler, the
    one that made the pairs of ``store``."""
    sampler = store.manifest["sampler"] if store is not None else None
    name = ("teacher" if sampler is None else
            f"teacher ({solver_name(sampler['method'])} x{sampler['steps']})")
    nfe = int(store.manifest.get("nfe") or teacher.nfe()) if store is not None else teacher.nfe()
    params = _params(teacher)
    rows = [Candidate(f"teacher (Euler x{k})", "teacher", teacher.nfe(steps=k, solver="euler"),
                      lambda x, y, k=k: teacher.sample(x, y, steps=k, solver="euler"), params)
            for k in euler]
    return [*(c for c in rows if c.name != name),
            Candidate(name, "teacher", nfe, lambda x, y: teacher.sample(x, y), params)]


def decoded(candidates: list[Candidate], decode: Decoder | None) -> list[Candidate]:
    """``candidates`` of a latent teacher with their outputs decoded to images (as they are
    for its students); unchanged when ``decode`` is None."""
    if decode is None:
        return candidates
    return [dataclasses.replace(c, sample=lambda x, y, f=c.sample: decode(f(x, y)))
            for c in candidates]


def _train_seconds(run: Path) -> float:
    """The trainer's own wall time for the run (stays right when the stage was reused)."""
    log = run / "log.jsonl"
    rows = [r for r in read_log(log, skip_damaged=True) if "time" in r] if log.is_file() else []
    return float(rows[-1]["time"]) if rows else math.nan


def student_candidates(gen: StudentRun, every_step_count: bool = False,
                       name: str | None = None) -> list[Candidate]:
    """The student of ``gen`` at its own step count, or at each of its ``sampling_steps``;
    ``name`` replaces its display name (``KDM`` in ``KDM (1 step)``)."""
    counts = gen.sampling_steps if every_step_count else (gen.nfe,)
    seconds = _train_seconds(gen.run) if gen.run is not None else math.nan
    name = name or student_name(gen.cfg.model)
    return [Candidate(student_label(gen.method, k, name), gen.method, k, gen.sampler(k),
                      gen.params, seconds) for k in counts]


def first_pairs(store: PairStore, gen: StudentRun, e: EvalConfig,
                device: torch.device) -> dict[str, np.ndarray]:
    """The store's first ``e.n`` pairs, a latent store's clean side decoded to images
    (N, C, H, W): what evaluation scores against when the teacher's data is not known."""
    pairs = store.load(np.arange(min(e.n, len(store))))
    if gen.decode is not None:
        pairs["clean"] = draw(lambda z, y: gen.decode(z), torch.from_numpy(pairs["clean"]),
                              None, gen.domain.sample_batch(e), device)
    return pairs


# -- kdm eval -------------------------------------------------------------------------------
def evaluate_run(run: str | Path, ecfg: EvalConfig | None = None, out: str | Path | None = None,
                 make_plots: bool = True, teacher: Teacher | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate the EMA weights of a student run against its teacher (rebuilt from the pair
    store's manifest, or ``teacher``: any :class:`~..protocols.Teacher`); writes
    ``eval.json`` (and plots) under ``out`` (default ``RUN/eval``) and returns the result."""
    run = Path(run)
    gen = StudentRun.load(run, device=device)
    cfg = dataclasses.replace(gen.cfg, eval=ecfg) if ecfg is not None else gen.cfg
    e, domain, dev = cfg.eval, gen.domain, gen.device
    out = Path(out) if out else run / "eval"
    store = PairStore(gen.meta["pairs"]) if Path(gen.meta["pairs"], "manifest.json").exists() \
        else None
    source = data_source(cfg, gen.meta)
    extras = dataset_extras(source)
    if teacher is None and store is not None:
        teacher = store_teacher(store, dev)
    pairs = first_pairs(store, gen, e, dev) if store is not None else None
    full = (decoded(teacher_candidates(teacher, store, euler=()), gen.decode)
            if teacher is not None else [])
    student = student_candidates(gen)
    reference = domain.reference(cfg, source is not None, full[0].sample if full else None,
                                 pairs, gen.sigma_max, gen.num_classes, dev)
    noise, labels = gen.noise(e.n, e.seed), gen.labels(e.n, e.seed)
    candidates = [*full, *student]
    ev = evaluate(candidates, domain, noise, labels, reference, cfg, device=dev,
                  paired_with=full[0].name if full else None, extras=extras,
                  keep=[c.name for c in candidates])
    row = ev.rows[-1]
    if pairs is not None:
        # A large gap between this and the held-out error means the student is limited by
        # how many pairs it saw, not by fitting them.
        y = torch.from_numpy(pairs["label"]) if "label" in pairs else None
        mapped = draw(student[0].sample, torch.from_numpy(pairs["noise"]), y,
                      domain.sample_batch(e), dev)
        row.update({f"train_pairs_{k}": v for k, v in domain.paired(mapped,
                                                                    pairs["clean"]).items()})
        row["train_pairs_noise_scale"] = store.manifest["sampler"].get("noise_scale", 1.0)
    result: dict[str, Any] = {"run": str(run.resolve()), "method": gen.method,
                              "shape": list(gen.shape), "data": source,
                              "settings": {**ev.settings, "weights": "ema"},
                              "reference": ev.reference}
    if full:
        result["teacher"] = top = ev.rows[0]
        h = domain.headline
        result["ratios"] = {f"{h}_student_over_teacher": row[h] / top[h],
                            "speedup_student_over_teacher": row["speedup_vs_teacher"]}
    result["student"] = row
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    if make_plots:
        shown = [Shown(c.name, noise.numpy(), ev.samples[c.name], c.sample) for c in candidates]
        paths = domain.plots(out, shown, reference, extras, full[0].name if full else None,
                             noise=gen.noise, num_classes=gen.num_classes, seed=e.seed,
                             device=dev)
        paths.update(_run_plots(run, gen, out))
        result["plots"] = {k: str(v) for k, v in paths.items()}
        write_json(out / "eval.json", result)
    return result


def _run_plots(run: Path, gen: StudentRun, out: Path) -> dict[str, Path]:
    """The Koopman spectrum (students with an operator K) and the loss curves."""
    paths = {}
    K = getattr(gen.model, "K", None)  # baselines have no Koopman operator
    if K is not None:
        paths["spectrum"] = plots.spectrum(spectra(K), out / "spectrum.png")
    log = run / "log.jsonl"
    rows = read_log(log, skip_damaged=True) if log.is_file() else []
    if any("loss" in r for r in rows):
        paths["loss"] = plots.loss_curves(rows, out / "loss.png")
    return paths


# -- kdm bench ------------------------------------------------------------------------------
def evaluate_students(runs: Mapping[str, str | Path], cfg: Config,
                      teacher: Teacher | None = None,
                      names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score the teacher (rebuilt from the pair store's manifest, or ``teacher``) at every
    NFE of :data:`TEACHER_NFES` and at its pairs' sampler, and every student run (all on one
    pair store; multi-step ones at each of their ``sampling_steps``), on the same noise with
    ``cfg.eval``'s settings: rows (a student's with ``student``, its key in ``runs``), the
    reference, the settings and ``students`` (per key: method, display name, w_adv, run,
    train seed). ``names`` gives students display names other than their own."""
    gens = {m: StudentRun.load(r, device=cfg.train.device) for m, r in runs.items()}
    first = next(iter(gens.values()))
    device, meta = first.device, first.meta
    if any(g.meta["pairs"] != meta["pairs"] for g in gens.values()):
        raise KDMError("bench compares students trained on one pair store; these runs were "
                       "trained on different ones")
    store = PairStore(meta["pairs"])
    if teacher is None:
        teacher = store_teacher(store, device)
    if teacher is None:
        raise KDMError(f"the teacher of pair store {store.path} cannot be rebuilt on this "
                       f"machine ({(store.manifest.get('teacher') or {}).get('path')}); bench "
                       "needs it for the teacher rows (pass it as an object through the API)")
    # the data the teacher learned comes from the runs, the metric settings from cfg
    scored = dataclasses.replace(first.cfg, eval=cfg.eval, train=cfg.train)
    source = data_source(scored, meta)
    extras = dataset_extras(source)
    domain, e = first.domain, cfg.eval
    teacher_rows = decoded(teacher_candidates(teacher, store), first.decode)
    full = teacher_rows[-1]
    shown = {key: (names or {}).get(key) or student_name(g.cfg.model) for key, g in gens.items()}
    students = {key: student_candidates(g, True, shown[key]) for key, g in gens.items()}
    candidates = [*teacher_rows, *(c for cs in students.values() for c in cs)]
    reference = domain.reference(scored, source is not None, full.sample,
                                 first_pairs(store, first, e, device) if source is None else None,
                                 first.sigma_max, first.num_classes, device)
    ev = evaluate(candidates, domain, first.noise(e.n, e.seed), first.labels(e.n, e.seed),
                  reference, scored, device=device, paired_with=full.name, extras=extras,
                  announce="bench")
    keys = [key for key, cs in students.items() for _ in cs]
    for row, key in zip(ev.rows[len(teacher_rows):], keys, strict=True):
        row["student"] = key
    about = {key: {"method": g.method, "name": shown[key], "w_adv": g.cfg.model.w_adv,
                   "run": str(Path(runs[key]).resolve()), "train_seed": g.cfg.train.seed}
             for key, g in gens.items()}
    return {"rows": ev.rows, "metric": domain.headline, "shape": list(first.shape),
            "data": source, "reference": ev.reference,
            "settings": {**ev.settings, "train": dataclasses.asdict(cfg.train)},
            "students": about}
