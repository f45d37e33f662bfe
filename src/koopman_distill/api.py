"""The Python API: every ``kdm`` command is a function here.

Run directories have a fixed shape: ``config.json`` (the resolved :class:`Config`),
``run.json`` (what kind of run, data dimension, noise scale, where its pairs came from),
``log.jsonl``, ``checkpoints/`` (safetensors weights + trainer state, ``latest`` pointer),
``eval/`` and ``plots/``.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, apply_overrides
from .domains import Domain, domain_for
from .errors import KDMError, warn
from .evaluation.core import draw
from .evaluation.extras import dataset_extras
from .io import read_json, remove_temp_files, write_json
from .labels import check_labels
from .pairs import PairStore, write_pairs
from .pairs.store import draw_noise
from .protocols import Decoder, Sampler, Teacher
from .runs import RUN_FORMAT, read_run
from .seeded import SeededDraws, block_spans, fill_noise, seeded_labels
from .students import (
    build_student,
    sampling_path_params,
    student_label,
    student_name,
    student_nfe,
)
from .teachers import (
    build_teacher,
    latent_decoder,
    load_run_teacher,
    teacher_from_arg,
    teacher_tensors,
)
from .threads import cpu_threads
from .training import Batches, Trainer
from .training.board import Board
from .training.checkpoint import latest_checkpoint, load_into, load_weights, step_of
from .training.data import rank_batch_size
from .training.distributed import init as init_distributed
from .training.distributed import on_main, rank, world_size
from .training.trainer import read_log, seed_everything

_START_TEMP = re.compile(r"\.(config|run)\.json\..+\.tmp")


# -- runs -----------------------------------------------------------------------------------
def _check_new_run(out: str | Path, cfg: Config) -> None:
    """Refuse to overwrite another run. A directory holding only what the same command, killed
    before ``run.json``, left is fine: it is started over."""
    check_out_path(out)
    out = Path(out)
    if (out / "run.json").exists():
        raise KDMError(f"{out} already holds a run; use --resume to continue it or pick "
                       "another --out")
    if out.exists() and any(not _start_debris(p, cfg) for p in out.iterdir()):
        raise KDMError(f"{out} exists and is not empty; pick another --out")


def check_out_path(out: str | Path) -> None:
    """Refuse an output path that could be written but never read back by name."""
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise KDMError(f"--out {os.fsencode(out)!r} is not valid UTF-8; pick a name in UTF-8 "
                       "(run directories are recorded by name in JSON)") from None


def absolute_sources(cfg: Config) -> None:
    """Record file paths the config names (``data.source``, ``*.init``) as absolute, so that a
    run resumes and evaluates from any directory."""
    source = cfg.data.source
    prefix, _, rest = source.partition(":")
    if prefix in ("fashion-mnist", "mnist") and rest:
        cfg.data.source = f"{prefix}:{Path(rest).resolve()}"
    elif source not in ("checkerboard", "digits", "fashion-mnist"):
        cfg.data.source = str(Path(source).resolve())
    for train in (cfg.train, cfg.teacher_train):
        if train.init:
            train.init = str(Path(train.init).resolve())


def _start_run(out: str | Path, cfg: Config, meta: dict[str, Any]) -> Path:
    """Create a run directory with its config (called once the run is set up, so that bad
    settings leave no directory behind)."""
    out = Path(out)
    _check_new_run(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "run.json"):
        remove_temp_files(out, name)
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "run.json", {"format": RUN_FORMAT, **meta})
    return out


def _start_debris(path: Path, cfg: Config) -> bool:
    """Whether ``path`` is a temp file of a killed start or the config.json it wrote for
    ``cfg``."""
    if _START_TEMP.fullmatch(path.name):
        return True
    try:
        return path.name == "config.json" and read_json(path) == cfg.to_dict()
    except KDMError:
        return False


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KDMError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KDMError(f"device {name!r} asked for but no CUDA GPU is available; use cpu")
    return device


def _weights(run: Path, ema: bool) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise KDMError(f"{run} has no checkpoint yet; train it first")
    return load_weights(ckpt / ("ema.safetensors" if ema else "model.safetensors")), ckpt


# -- teacher --------------------------------------------------------------------------------
def train_teacher(cfg: Config, out: str | Path) -> Path:
    """Train the teacher ``cfg.teacher.kind`` names (flow: a flow-matching MLP on vectors,
    edm: an EDM UNet on images) on its data into ``out``."""
    init_distributed()
    absolute_sources(cfg)
    tensors, meta = teacher_tensors(cfg)
    on_main(lambda: _check_new_run(out, cfg))
    return _fit_teacher(cfg, meta, Path(out), tensors, resume=False)


def init_weights(model: torch.nn.Module, run: str | Path) -> None:
    """Start ``model`` from the EMA weights of ``run``'s latest checkpoint (``train.init``:
    fine-tuning with other settings; the optimizer starts fresh)."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise KDMError(f"train.init {run} holds no checkpoint; give a run directory that has "
                       "trained at least to its first checkpoint")
    load_into(model, load_weights(ckpt / "ema.safetensors"), ckpt)


def _fit_teacher(cfg: Config, meta: dict[str, Any], out: Path,
                 tensors: dict[str, torch.Tensor], resume: bool) -> Path:
    seed_everything(cfg.teacher_train.seed)
    model = build_teacher(cfg, meta)
    if cfg.teacher_train.init and not resume:
        init_weights(model, cfg.teacher_train.init)
    data = Batches(tensors, rank_batch_size(cfg.teacher_train.batch_size),
                   cfg.teacher_train.seed, rank(), world_size())
    trainer = Trainer(model, data, cfg.teacher_train, out,
                      device=resolve_device(cfg.teacher_train.device), name="teacher",
                      resume_hint=f"kdm teacher train --resume {out}",
                      board=Board(out) if cfg.teacher_train.tensorboard else None)
    return _fit(trainer, cfg, meta, out, resume)


def load_teacher(run: str | Path, ema: bool = True) -> tuple[torch.nn.Module, Config]:
    """A trained teacher (EMA weights by default, its newest checkpoint) in eval mode, and its
    config."""
    return load_run_teacher(run, ema=ema)


# -- pairs ----------------------------------------------------------------------------------
def make_pairs(teacher: Teacher | str | Path, out: str | Path, cfg: Config | None = None,
               progress: bool = True) -> PairStore:
    """Run a teacher's deterministic sampler on seeded noise into a pair store (resumable).

    ``teacher`` is a :class:`~.protocols.Teacher` object, an adapter's ``kind:TARGET``
    (``denoiser:MODULE:FUNCTION``, ``callable:MODULE:FUNCTION``, ``diffusers:DIR``: see
    :func:`~.teachers.teacher_from_arg`), or a teacher run directory (its EMA weights, with
    ``pairs.solver`` / ``pairs.steps``, by default ``teacher.sampler`` / ``teacher.steps``).
    ``cfg`` holds the ``pairs`` settings and ``train.device`` (default: the run's config, or
    the defaults). The manifest records the config, with the run's own ``data`` section
    (training on the store takes it from there), for a run; none for any other teacher, whose
    data is its own affair. Shard ``i`` draws its noise from its own seed
    (:func:`~.pairs.store.draw_noise`: per-pair seeds when ``pairs.store_noise`` is off, else
    one draw), then, for a conditional teacher, uniform labels from the same generator; the
    teacher (an ``nn.Module`` is moved to ``train.device``) maps ``pairs.batch_size`` rows at a
    time there, and the progress bar moves per batch. The manifest records the teacher's
    ``identity()`` and ``spec()``, its sampler and NFE; a store in ``out`` made with other
    settings is refused.
    """
    init_distributed()
    record = None
    named = (teacher_from_arg(str(teacher), (cfg or Config()).pairs)
             if isinstance(teacher, str) else None)
    if named is not None:
        teacher = named
    elif isinstance(teacher, (str, os.PathLike)):
        run_cfg = read_run(teacher)[0]
        cfg = copy.copy(cfg) if cfg is not None else run_cfg
        cfg.data = run_cfg.data  # the data the teacher learned, whatever the caller's says
        record = cfg
        if cfg.pairs.guidance != 1.0:
            raise KDMError("pairs.guidance is for diffusers teachers with a null class; a "
                           "teacher trained here has none: drop it")
        teacher = load_run_teacher(teacher, steps=cfg.pairs.steps or cfg.teacher.steps,
                                   solver=cfg.pairs.solver or cfg.teacher.sampler)[0]
    if not isinstance(teacher, Teacher):
        raise KDMError(f"make_pairs needs a teacher run directory or a Teacher (shape, "
                       f"num_classes, sigma_max, sample, nfe, identity, spec), got "
                       f"{type(teacher).__name__}")
    cfg = cfg or Config()
    device = resolve_device(cfg.train.device)
    if isinstance(teacher, torch.nn.Module):
        teacher.to(device)
    shape, k, bs = tuple(teacher.shape), int(teacher.num_classes), cfg.pairs.batch_size
    scale = cfg.pairs.noise_scale
    identity = teacher.identity()

    def generate(g: torch.Generator, count: int, advance: Any) -> dict[str, torch.Tensor]:
        noise, seeds = draw_noise(g, count, shape, teacher.sigma_max * scale,
                                  seeded=not cfg.pairs.store_noise)
        label = torch.randint(0, k, (count,), generator=g) if k else None
        clean = []
        with torch.no_grad():
            for i in range(0, count, bs):
                y = None if label is None else label[i:i + bs].to(device)
                clean.append(teacher.sample(noise[i:i + bs].to(device), y).cpu())
                advance(len(clean[-1]))
        out = {"noise": noise, "clean": torch.cat(clean)}
        if seeds is not None:
            out["noise_seed"] = seeds
        if label is not None:
            out["label"] = label
        return out

    with cpu_threads(cfg.train.threads, every_module_call=True):
        return write_pairs(
            out, generate, cfg.pairs.n, cfg.pairs.shard_size, cfg.pairs.seed,
            sigma_max=teacher.sigma_max, shape=shape,
            teacher={**identity, "spec": teacher.spec()},
            sampler={**identity["sampler"], **({"noise_scale": scale} if scale != 1.0 else {})},
            nfe=teacher.nfe(), config=record.to_dict() if record else None,
            source={"kind": "generated"}, progress=progress,
            clean_dtype=cfg.pairs.clean_dtype,
            store_noise=cfg.pairs.store_noise, labels=bool(k), reports_progress=True)


# -- KDM ------------------------------------------------------------------------------------
def store_classes(store: PairStore, cfg: Config, data_given: bool = False) -> int:
    """Number of classes a KDM on ``store`` is conditioned on (0 = unconditional): the
    ``data.conditional`` of the teacher's data (recorded with the store, or ``data_given``
    by the caller), else whether the store has labels (a teacher of the user's that takes
    class labels)."""
    known = data_given or bool(store.manifest.get("config"))
    conditional = cfg.data.conditional if known else store.has_labels
    if not conditional:
        return 0
    if not store.has_labels:
        raise KDMError(f"data.conditional is set but pair store {store.path} has no labels; "
                       "make the pairs with a conditional teacher or set "
                       "data.conditional=false")
    teacher = store.manifest.get("teacher") or {}
    if teacher.get("num_classes"):
        return int(teacher["num_classes"])
    return 1 + max(int(store.shard_arrays(i)["label"].max()) for i in range(store.num_shards))


def train_kdm(cfg: Config, pairs: str | Path, out: str | Path,
              teacher_data: bool = False) -> Path:
    """Distill the pair store ``pairs`` into a one-step KDM in a new run directory ``out``:
    MLP networks for vectors (N, D), UNets for images (N, C, R, R).

    The data its teacher learned (evaluation's real reference, its classifier, a dataset's
    extras) is the store's record of it; for a store without one (a teacher of the user's),
    ``teacher_data`` says that ``cfg.data`` is that data (``kdm train --set data.*``)."""
    init_distributed()
    absolute_sources(cfg)
    store = PairStore(pairs)
    store.check_intact()
    domain_for(store.shape)  # a one-line error for examples that are neither
    recorded = bool(store.manifest.get("config"))
    if recorded and teacher_data:
        raise KDMError(f"pair store {pairs} records the data its teacher learned; drop the "
                       "data.* settings")
    if recorded:  # the data the teacher learned is part of the record
        cfg.data = Config.from_dict(store.manifest["config"]).data
    elif teacher_data and len(store.shape) == 3 and not (
            store.manifest.get("teacher") or {}).get("latent"):  # pixels, not a VAE's latents
        d = cfg.data
        if tuple(store.shape) != (d.channels, d.resolution, d.resolution):
            raise KDMError(f"pair store {pairs} holds {tuple(store.shape)} images but data.* "
                           f"describes ({d.channels}, {d.resolution}, {d.resolution}) "
                           f"{d.source} images; set data.resolution and data.channels to the "
                           "teacher's, or drop data.*")
    meta = {"kind": "kdm", "sigma_max": store.sigma_max, "pairs": str(Path(pairs).resolve()),
            "n_pairs": len(store), "teacher": store.manifest.get("teacher"),
            "nfe_teacher": store.manifest.get("nfe"), "shape": list(store.shape),
            "num_classes": store_classes(store, cfg, teacher_data),
            "teacher_data": recorded or teacher_data}
    store.check_finite()  # validated before anything is written
    on_main(lambda: _check_new_run(out, cfg))
    return _fit_kdm(cfg, meta, Path(out), store, resume=False)


def build_kdm(cfg: Config, meta: dict[str, Any]) -> torch.nn.Module:
    """The student of ``cfg.model.method`` for a run's ``meta`` (``shape``, ``sigma_max``,
    ``num_classes``): KDM, or a baseline sized to KDM's sampling path."""
    return build_student(cfg.model, meta["shape"], meta["sigma_max"],
                         int(meta.get("num_classes", 0)))


def data_source(cfg: Config, meta: dict[str, Any]) -> str | None:
    """The ``data.source`` the teacher of a student run learned, or None when it is not known
    (imported pairs, a teacher of the user's without ``data.*`` given to :func:`train_kdm`):
    ``cfg.data`` is then the preset's, not the teacher's."""
    if "teacher_data" in meta:
        return cfg.data.source if meta["teacher_data"] else None
    if not Path(meta["pairs"], "manifest.json").is_file():  # runs from before teacher_data
        return None
    return cfg.data.source if PairStore(meta["pairs"]).manifest.get("config") else None


def _fit_kdm(cfg: Config, meta: dict[str, Any], out: Path, store: PairStore,
             resume: bool) -> Path:
    seed_everything(cfg.train.seed)
    model = build_kdm(cfg, meta)
    if cfg.train.init and not resume:
        init_weights(model, cfg.train.init)
    device = resolve_device(cfg.train.device)
    data = Batches(store, rank_batch_size(cfg.train.batch_size), cfg.train.seed, rank(),
                   world_size())
    # the first pairs, scored in training: at least 256, and 4096 numbers
    probe_rows = min(len(data), max(256, 4096 // math.prod(meta["shape"])))
    probe = {k: v.to(device) for k, v in data.rows(torch.arange(probe_rows)).items()}
    source = data_source(cfg, meta)
    extras, domain = dataset_extras(source), domain_for(meta["shape"])

    @functools.cache
    def heldout() -> tuple[torch.Tensor, torch.Tensor | None, Any] | None:
        """The first min(eval.n, 5000) noise draws (n, *shape) and labels (n,) or None of
        ``kdm eval``, and the domain's scorer of samples from them (images: FD, KID, class
        accuracy against the real images); None when neither it nor the dataset's extras
        (the checkerboard's inside rate) score them. Built at the first evaluation."""
        n, k = min(cfg.eval.n, 5000), meta["num_classes"]
        labels = seeded_labels(n, k, cfg.eval.seed) if k else None
        score = domain.heldout_scorer(cfg, source is not None, labels, device)
        if extras is None and score is None:
            return None
        noise = fill_noise(torch.empty(n, *meta["shape"]),
                           torch.Generator().manual_seed(cfg.eval.seed), n, meta["sigma_max"])
        return noise, labels, score

    def evaluate(ema: torch.nn.Module, step: int) -> dict[str, float]:
        """The error on the first training pairs, and the held-out scores."""
        with torch.no_grad():
            ema.eval()
            labels = probe["label"] if meta["num_classes"] else None  # a store's may be unused
            res = {"pair_mse": (ema(probe["noise"], labels) - probe["clean"]).square().mean()
                   .item()}
        held = heldout()
        if held is not None:
            noise, held_labels, score = held
            x = draw(ema, noise, held_labels, domain.sample_batch(cfg.eval), device)
            if extras is not None:
                res.update(extras.training_metrics(x))
            if score is not None:
                res.update(score(x))
        return res

    def preview(ema: torch.nn.Module, png: Path) -> Path:
        """A picture of the EMA model's samples on the first (fixed) pairs' noise."""
        with torch.no_grad():
            ema.eval()
            labels = probe["label"][:100] if meta["num_classes"] else None
            x = ema(probe["noise"][:100], labels).float().cpu().numpy()
        return domain_for(meta["shape"]).picture({f"EMA samples, step {trainer.step}": x}, png)

    trainer = Trainer(model, data, cfg.train, out, evaluate=evaluate, device=device,
                      resume_hint=f"kdm train --resume {out}",
                      board=Board(out, preview) if cfg.train.tensorboard else None)
    return _fit(trainer, cfg, meta, out, resume)


# Settings a resumed run may change: they do not change what the steps already taken, or the
# ones still to come, compute (``steps`` extends or shortens the run; a schedule that depends
# on it is stretched, which is warned about).
RESUMABLE = ("steps", "log_every", "eval_every", "ckpt_every", "keep_checkpoints",
             "max_nonfinite", "progress", "device", "prefetch", "tensorboard", "threads")


def resume_run(run: str | Path, kind: str | None = None,
               overrides: list[str] | None = None) -> Path:
    """Continue an interrupted ``train`` or ``teacher train`` run from its newest complete
    checkpoint. ``kind`` (``kdm`` or ``teacher``) refuses a run of the other kind;
    ``overrides`` (``section.field=value``) may change only the trainer's :data:`RESUMABLE`
    settings, e.g. ``train.steps=N`` to extend the run; they are saved to its config.json."""
    init_distributed()
    run = Path(run)
    cfg, meta = read_run(run)
    if kind is not None and meta["kind"] != kind:
        other = ("kdm teacher train --resume" if meta["kind"] == "teacher"
                 else "kdm train --resume")
        raise KDMError(f"{run} is a {'teacher' if meta['kind'] == 'teacher' else 'KDM'} run; "
                       f"continue it with `{other} {run}`")
    section = "teacher_train" if meta["kind"] == "teacher" else "train"
    new = _resume_overrides(cfg, overrides or [], section, run)
    if meta["kind"] == "teacher":
        return _fit_teacher(new, meta, run, teacher_tensors(new)[0], resume=True)
    store = PairStore(meta["pairs"])
    store.check_intact()
    store.check_finite()
    return _fit_kdm(new, meta, run, store, resume=True)


def _resume_overrides(cfg: Config, overrides: list[str], section: str, run: Path) -> Config:
    """``cfg`` with ``overrides`` applied, refusing any that would change the run's result and
    a step count the run has already passed."""
    new = apply_overrides(cfg, overrides)
    old_d, new_d = cfg.to_dict(), new.to_dict()
    changed = [f"{sec}.{k}" for sec in old_d for k in (old_d[sec] if isinstance(old_d[sec], dict)
               else ()) if old_d[sec][k] != new_d[sec][k]]
    refused = [k for k in changed if k.split(".")[0] != section
               or k.split(".", 1)[1] not in RESUMABLE]
    if refused:
        raise KDMError(f"--set {refused[0]} would change what the resumed run {run} learns; "
                       f"with --resume only {section}.{{{','.join(RESUMABLE)}}} may change "
                       f"(fine-tune with other settings in a new run: --set {section}.init={run})")
    ckpt = latest_checkpoint(run)
    steps, done = getattr(new, section).steps, step_of(ckpt) if ckpt else 0
    if steps < done:
        raise KDMError(f"{run} is at step {done}, beyond {section}.steps={steps}; give "
                       f"--set {section}.steps=N with N >= {done}")
    old_train, new_train = getattr(cfg, section), getattr(new, section)
    if new_train.steps != old_train.steps:
        stretched = [name for name, on in (
            (f"{section}.lr_schedule=cosine", new_train.lr_schedule == "cosine"),
            ("model.sigma_z_schedule=cosine", section == "train"
             and new.model.sigma_z_schedule == "cosine")) if on]
        if stretched:
            warn(f"{' and '.join(stretched)} now run{'s' if len(stretched) == 1 else ''} over "
                 f"{new_train.steps} steps from step {done} on, so the result differs from a "
                 f"run planned with {new_train.steps} steps")
    return new


def _fit(trainer: Trainer, cfg: Config, meta: dict[str, Any], out: Path, resume: bool) -> Path:
    """Restore ``trainer`` from ``out`` (``resume``) or start the run directory there, then
    train to the end."""
    if resume:
        _resumed(trainer, cfg, out)
    else:
        on_main(lambda: _start_run(out, cfg, meta))  # rank 0 writes
    trainer.fit()
    return out


def _resumed(trainer: Trainer, cfg: Config, run: Path) -> None:
    """Restore ``trainer`` from the run's checkpoint, then record settings changed on resume
    (only once the checkpoint was read and found whole)."""
    trainer.resume()
    if read_json(run / "config.json", "run config") != cfg.to_dict():
        on_main(lambda: write_json(run / "config.json", cfg.to_dict()))


def run_summary(run: str | Path) -> str:
    """One line on a run's state: step, last logged loss and newest checkpoint."""
    run = Path(run)
    cfg, meta = read_run(run)
    steps = (cfg.teacher_train if meta["kind"] == "teacher" else cfg.train).steps
    ckpt = latest_checkpoint(run)
    rows = read_log(run / "log.jsonl") if (run / "log.jsonl").is_file() else []
    losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    loss = f", loss {losses[-1]['loss']:.4g}" if losses else ""
    where = f", checkpoint {ckpt}" if ckpt else ""
    return f"{run}: step {step_of(ckpt) if ckpt else 0}/{steps}{loss}{where}"


class StudentRun(SeededDraws):
    """A trained student (KDM or a baseline) ready to sample: ``sample(n)`` or ``map(noise)``
    at its own step count (one, or a rectified flow's ``model.sample_steps``), or
    ``sample_chunks`` / ``map_chunks`` for outputs larger than memory (the same values).

    Examples are vectors (D,) or images (C, H, W); a class-conditional student takes int64
    labels (n,) (``sample`` draws them uniformly from its seed when none are given). A student
    of a latent teacher (a diffusers pipeline with a VAE) maps noise to latents (:attr:`shape`)
    and returns them decoded to images (:attr:`output_shape`) unless loaded with
    ``latents=True``.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, meta: dict[str, Any],
                 device: torch.device | None = None, run: Path | None = None,
                 decode: Decoder | None = None):
        self.device = device or torch.device("cpu")
        self.model, self.cfg, self.meta = model.to(self.device).eval(), cfg, meta
        self.run, self.decode = run, decode

    @classmethod
    def load(cls, run: str | Path, ema: bool = True, device: str = "cpu",
             latents: bool = False) -> StudentRun:
        run = Path(run)
        cfg, meta = read_run(run)
        if meta.get("kind") != "kdm":
            raise KDMError(f"{run} is a {meta.get('kind')!r} run, not a KDM run")
        model = build_kdm(cfg, meta)
        weights, ckpt = _weights(run, ema)
        load_into(model, weights, ckpt)
        dev = resolve_device(device)
        decode = None if latents else latent_decoder(meta.get("teacher") or {}, dev)
        return cls(model, cfg, meta, dev, run, decode)

    @property
    def sigma_max(self) -> float:
        return float(self.meta["sigma_max"])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (D,) or (C, H, W)."""
        return tuple(self.meta["shape"])

    @functools.cached_property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output: :attr:`shape`, or a latent student's decoded image."""
        if self.decode is None:
            return self.shape
        return tuple(self.decode(torch.zeros(1, *self.shape, device=self.device)).shape[1:])

    @property
    def domain(self) -> Domain:
        """The domain of the outputs (decoded images for a latent student)."""
        return domain_for(self.output_shape)

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes", 0))

    @property
    def method(self) -> str:
        """``kdm``, ``kd`` or ``rectified``."""
        return self.cfg.model.method

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: 1, or the rectified baseline's ``sample_steps``."""
        return student_nfe(self.cfg.model)

    @property
    def sampling_steps(self) -> tuple[int, ...]:
        """The step counts an evaluation reports for this student (``(1,)`` for a one-step
        student)."""
        return tuple(self.model.sampling_steps)

    @property
    def name(self) -> str:
        """Display name of the student, e.g. ``KDM (1 step)``, ``KD + adv. (1 step)``."""
        return student_label(self.method, self.nfe, student_name(self.cfg.model))

    @property
    def params(self) -> int:
        """Parameters on the sampling path (not E_0, not the critic)."""
        return sampling_path_params(self.model)

    @property
    def block(self) -> int:
        """Rows per network call and per draw of noise: the domain's."""
        return self.domain.block

    def sampler(self, steps: int | None = None) -> Sampler:
        """The student as a :data:`~.protocols.Sampler` on its device, at its own step count
        or (a multi-step student) at ``steps``."""
        model, decode = self.model, self.decode
        if decode is None:
            return lambda x, y: model.sample(x, y, steps=steps)
        return lambda x, y: decode(model.sample(x, y, steps=steps))

    def spans(self, n: int, chunk: int | None = None) -> list[tuple[int, int]]:
        """Row ranges [start, stop) of ``n`` examples in chunks of ``chunk`` rows, a multiple
        of :attr:`block` (None: one chunk); a tail too short to draw alone joins the chunk
        before it (see :func:`~.seeded.block_spans`)."""
        if chunk is not None and (chunk < 1 or chunk % self.block):
            raise ValueError(f"chunk must be a positive multiple of {self.block}, got {chunk}")
        return block_spans(n, chunk or max(n, 1), math.prod(self.shape))

    @torch.no_grad()
    def map(self, noise: torch.Tensor | np.ndarray, labels: Any = None,
            batch_size: int | None = None) -> np.ndarray:
        """One-step samples for given noise (n, *shape) [and labels (n,)] -> (n, *shape)."""
        x = (noise.detach().float().cpu() if isinstance(noise, torch.Tensor)
             else torch.from_numpy(np.array(noise, dtype=np.float32)))
        if x.ndim != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            raise KDMError(f"noise must have shape (N, {', '.join(map(str, self.shape))}), "
                           f"got {tuple(x.shape)}")
        y = check_labels(labels, len(x), self.num_classes)
        bs = batch_size or self.block
        out = []
        for i in range(0, len(x), bs):
            args = [x[i:i + bs].to(self.device)]
            if y is not None:
                args.append(y[i:i + bs].to(self.device))
            x_0 = self.model(*args)
            out.append((x_0 if self.decode is None else self.decode(x_0)).float().cpu())
        return torch.cat(out).numpy()

    def sample(self, n: int, seed: int = 0, labels: Any = None) -> np.ndarray:
        """``n`` one-step samples from seeded noise, (n, *shape)."""
        return self.map(self.noise(n, seed), self.labels(n, seed) if labels is None else labels)

    def sample_chunks(self, n: int, seed: int = 0, labels: Any = None,
                      chunk: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`sample` in successive chunks of ``chunk`` rows (see :meth:`spans`), for
        outputs larger than memory: concatenated, they are ``sample(n, seed, labels)`` bit for
        bit (the same noise numbers in the same network batches)."""
        y = check_labels(self.labels(n, seed) if labels is None else labels, n, self.num_classes)
        g = torch.Generator().manual_seed(seed)
        for i, j in self.spans(n, chunk):
            x = fill_noise(torch.empty(j - i, *self.shape), g, self.block, self.sigma_max)
            yield self.map(x, None if y is None else y[i:j])

    def map_chunks(self, noise: torch.Tensor | np.ndarray, labels: Any = None,
                   chunk: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`map` of noise (n, *shape) [and labels (n,)] in successive chunks of
        ``chunk`` rows (see :meth:`spans`); concatenated, they are ``map(noise, labels)``."""
        if noise.ndim != 1 + len(self.shape) or tuple(noise.shape[1:]) != self.shape:
            raise KDMError(f"noise must have shape (N, {', '.join(map(str, self.shape))}), "
                           f"got {tuple(noise.shape)}")
        y = check_labels(labels, len(noise), self.num_classes)
        for i, j in self.spans(len(noise), chunk):
            yield self.map(noise[i:j], None if y is None else y[i:j])


def load_run(run: str | Path, ema: bool = True, device: str = "cpu",
             latents: bool = False) -> StudentRun:
    """Load a student run for sampling (EMA weights unless ``ema=False``; a latent student's
    raw latents with ``latents=True``)."""
    return StudentRun.load(run, ema, device, latents)
