"""The Python API: every ``kdm`` command is a function here.

Run directories have a fixed shape: ``config.json`` (the resolved :class:`Config`),
``run.json`` (what kind of run, data dimension, noise scale, where its pairs came from),
``log.jsonl``, ``checkpoints/`` (safetensors weights + trainer state, ``latest`` pointer),
``eval/`` and ``plots/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, load_config
from .data.arrays import load_points
from .data.checkerboard import inside_fraction, sample_checkerboard
from .errors import KDMError
from .io import read_json, sha256_file, write_json
from .models import KDM
from .pairs import PairStore, write_pairs
from .teachers import FlowMatchingTeacher, nfe
from .training import TensorBatches, Trainer
from .training.checkpoint import latest_checkpoint, load_into, load_weights
from .training.trainer import seed_everything

RUN_FORMAT = 1


# -- runs -----------------------------------------------------------------------------------
def _start_run(out: str | Path, cfg: Config, meta: dict[str, Any]) -> Path:
    """Create a run directory with its config; refuse to overwrite another run."""
    out = Path(out)
    if (out / "run.json").exists():
        raise KDMError(f"{out} already holds a run; use --resume to continue it or pick "
                       "another --out")
    if out.exists() and any(out.iterdir()):
        raise KDMError(f"{out} exists and is not empty; pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "run.json", {"format": RUN_FORMAT, **meta})
    return out


def read_run(run: str | Path) -> tuple[Config, dict[str, Any]]:
    """The config and metadata of a run directory."""
    run = Path(run)
    if not run.is_dir():
        raise KDMError(f"run directory not found: {run}")
    meta = read_json(run / "run.json", "run metadata")
    if meta.get("format", 0) > RUN_FORMAT:
        raise KDMError(f"{run} was written by a newer koopman-distill (run format "
                       f"{meta['format']} > {RUN_FORMAT}); upgrade the package")
    return load_config(str(run / "config.json")), meta


def _weights(run: Path, ema: bool) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise KDMError(f"{run} has no checkpoint yet; train it first")
    return load_weights(ckpt / ("ema.safetensors" if ema else "model.safetensors")), ckpt


# -- teacher --------------------------------------------------------------------------------
def teacher_data(cfg: Config) -> torch.Tensor:
    """The teacher's training data (N, 2): the embedded checkerboard or a user ``.npy``."""
    if cfg.data.source == "checkerboard":
        return sample_checkerboard(cfg.data.n, torch.Generator().manual_seed(cfg.data.seed))
    return torch.from_numpy(load_points(cfg.data.source))


def train_teacher(cfg: Config, out: str | Path) -> Path:
    """Train a flow-matching teacher into a new run directory ``out``."""
    x = teacher_data(cfg)
    meta = {"kind": "teacher", "dim": int(x.shape[1]), "n_data": len(x),
            "sigma_max": cfg.teacher.sigma_max}
    out = _start_run(out, cfg, meta)
    return _fit_teacher(cfg, out, x, resume=False)


def _fit_teacher(cfg: Config, out: Path, x: torch.Tensor, resume: bool) -> Path:
    seed_everything(cfg.teacher_train.seed)
    model = FlowMatchingTeacher(x.shape[1], cfg.teacher)
    data = TensorBatches({"x": x}, cfg.teacher_train.batch_size, cfg.teacher_train.seed)
    trainer = Trainer(model, data, cfg.teacher_train, out)
    if resume:
        trainer.resume()
    trainer.fit()
    return out


def load_teacher(run: str | Path, ema: bool = True) -> tuple[FlowMatchingTeacher, Config]:
    """A trained teacher (EMA weights by default) in eval mode, and its config."""
    run = Path(run)
    cfg, meta = read_run(run)
    if meta.get("kind") != "teacher":
        raise KDMError(f"{run} is a {meta.get('kind')!r} run, not a teacher")
    model = FlowMatchingTeacher(meta["dim"], cfg.teacher)
    weights, ckpt = _weights(run, ema)
    load_into(model, weights, ckpt)
    return model.eval(), cfg


def teacher_identity(run: str | Path) -> dict[str, Any]:
    """What identifies a teacher in a pair store manifest."""
    run = Path(run).resolve()
    _, ckpt = _weights(run, True)
    return {"kind": "flow-matching-mlp", "path": str(run), "checkpoint": ckpt.name,
            "weights_sha256": sha256_file(ckpt / "ema.safetensors")}


# -- pairs ----------------------------------------------------------------------------------
def make_pairs(teacher_run: str | Path, out: str | Path, cfg: Config | None = None,
               progress: bool = True) -> PairStore:
    """Run the teacher's ODE sampler on seeded noise and write a pair store (resumable)."""
    teacher, tcfg = load_teacher(teacher_run)
    cfg = cfg or tcfg  # the teacher's config with the caller's pairs/sampler settings
    sampler, steps, sigma = cfg.teacher.sampler, cfg.teacher.steps, tcfg.teacher.sigma_max
    n_fe = nfe(sampler, steps)
    bs = cfg.pairs.batch_size

    def generate(g: torch.Generator, count: int) -> dict[str, torch.Tensor]:
        noise = sigma * torch.randn(count, teacher.dim, generator=g)
        clean = torch.cat([teacher.sample(noise[i:i + bs], sampler, steps)
                           for i in range(0, count, bs)])
        return {"noise": noise, "clean": clean}

    return write_pairs(out, generate, cfg.pairs.n, cfg.pairs.shard_size, cfg.pairs.seed,
                       sigma_max=sigma, shape=(teacher.dim,), teacher=teacher_identity(teacher_run),
                       sampler={"method": sampler, "steps": steps}, nfe=n_fe,
                       config=cfg.to_dict(), source={"kind": "generated"}, progress=progress)


# -- KDM ------------------------------------------------------------------------------------
def _pair_tensors(store: PairStore) -> dict[str, torch.Tensor]:
    store.check_finite()
    arrays = store.load()
    return {k: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=np.float32))
            for k in ("noise", "clean")}


def train_kdm(cfg: Config, pairs: str | Path, out: str | Path) -> Path:
    """Distill the pair store ``pairs`` into a one-step KDM in a new run directory ``out``."""
    store = PairStore(pairs)
    if len(store.shape) != 1:
        raise KDMError(f"pair store {pairs} holds examples of shape {store.shape}; the MLP KDM "
                       "needs vectors (N, D)")
    if store.manifest.get("config"):  # the data the teacher learned is part of the record
        cfg.data = Config.from_dict(store.manifest["config"]).data
    meta = {"kind": "kdm", "dim": int(store.shape[0]), "sigma_max": store.sigma_max,
            "pairs": str(Path(pairs).resolve()), "n_pairs": len(store),
            "teacher": store.manifest.get("teacher"), "nfe_teacher": store.manifest.get("nfe")}
    tensors = _pair_tensors(store)  # validated before anything is written
    out = _start_run(out, cfg, meta)
    return _fit_kdm(cfg, meta, out, tensors, resume=False)


def build_kdm(cfg: Config, meta: dict[str, Any]) -> KDM:
    return KDM(meta["dim"], cfg.model, meta["sigma_max"])


def _fit_kdm(cfg: Config, meta: dict[str, Any], out: Path, tensors: dict[str, torch.Tensor],
             resume: bool) -> Path:
    seed_everything(cfg.train.seed)
    model = build_kdm(cfg, meta)
    data = TensorBatches(tensors, cfg.train.batch_size, cfg.train.seed)
    probe = {k: v[:2048] for k, v in tensors.items()}
    g = torch.Generator().manual_seed(cfg.eval.seed)
    probe_noise = meta["sigma_max"] * torch.randn(min(cfg.eval.n, 5000), meta["dim"], generator=g)

    def evaluate(ema: torch.nn.Module, step: int) -> dict[str, float]:
        with torch.no_grad():
            ema.eval()
            res = {"pair_mse": (ema(probe["noise"]) - probe["clean"]).square().mean().item()}
            if cfg.data.source == "checkerboard":
                res["inside"] = inside_fraction(ema(probe_noise).numpy())
        return res

    trainer = Trainer(model, data, cfg.train, out, evaluate=evaluate)
    if resume:
        trainer.resume()
    trainer.fit()
    return out


def resume_run(run: str | Path) -> Path:
    """Continue an interrupted ``train`` or ``teacher train`` run from its latest checkpoint."""
    run = Path(run)
    cfg, meta = read_run(run)
    if meta.get("kind") == "teacher":
        return _fit_teacher(cfg, run, teacher_data(cfg), resume=True)
    if meta.get("kind") == "kdm":
        return _fit_kdm(cfg, meta, run, _pair_tensors(PairStore(meta["pairs"])), resume=True)
    raise KDMError(f"{run} has unknown run kind {meta.get('kind')!r}")


class OneStepGenerator:
    """A trained KDM ready to sample: ``sample(n)`` or ``map(noise)`` in one step."""

    def __init__(self, model: KDM, cfg: Config, meta: dict[str, Any]):
        self.model, self.cfg, self.meta = model.eval(), cfg, meta

    @classmethod
    def load(cls, run: str | Path, ema: bool = True) -> OneStepGenerator:
        run = Path(run)
        cfg, meta = read_run(run)
        if meta.get("kind") != "kdm":
            raise KDMError(f"{run} is a {meta.get('kind')!r} run, not a KDM run")
        model = build_kdm(cfg, meta)
        weights, ckpt = _weights(run, ema)
        load_into(model, weights, ckpt)
        return cls(model, cfg, meta)

    @property
    def sigma_max(self) -> float:
        return float(self.meta["sigma_max"])

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """Seeded ``x_T ~ N(0, sigma_max^2 I)``, (n, dim)."""
        g = torch.Generator().manual_seed(seed)
        return self.sigma_max * torch.randn(n, self.meta["dim"], generator=g)

    @torch.no_grad()
    def map(self, noise: torch.Tensor | np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """One-step samples for given noise (n, dim) -> (n, dim) float32."""
        x = (noise.detach().float().cpu() if isinstance(noise, torch.Tensor)
             else torch.from_numpy(np.array(noise, dtype=np.float32)))
        if x.ndim != 2 or x.shape[1] != self.meta["dim"]:
            raise KDMError(f"noise must have shape (N, {self.meta['dim']}), got "
                           f"{tuple(x.shape)}")
        return torch.cat([self.model(x[i:i + batch_size])
                          for i in range(0, len(x), batch_size)]).numpy()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` one-step samples from seeded noise, (n, dim)."""
        return self.map(self.noise(n, seed))


def load_run(run: str | Path, ema: bool = True) -> OneStepGenerator:
    """Load a KDM run for sampling (EMA weights unless ``ema=False``)."""
    return OneStepGenerator.load(run, ema)


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time in seconds."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t
