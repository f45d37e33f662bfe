"""A diffusers model in a local ``save_pretrained`` folder as a teacher (``diffusers:DIR``).

``DIR`` is a pipeline folder (``model_index.json``, ``unet/`` or ``transformer/``,
``scheduler/``, optional ``vae/``) or a bare model folder (``config.json`` of a diffusers
model; the scheduler is then the solver's with diffusers' defaults). diffusers' own models and
schedulers run the sampling loop (``set_timesteps``, ``scale_model_input``, ``step``); only
deterministic solvers are offered (``pairs.solver``): ``ddim`` (eta 0), ``dpm++2m``
(DPM-Solver++ 2M), ``euler`` and ``heun`` (the last three on Karras sigmas), ``pairs.steps``
steps (default 25). The prediction type (epsilon, v, sample) is the scheduler config's.
``x_T`` has std ``init_noise_sigma`` of the scheduler after ``set_timesteps``: the store's
``sigma_max``.

A class-conditional model (``num_class_embeds`` of a UNet, ``num_embeds_ada_norm`` of a DiT)
makes labelled pairs; ``pairs.guidance`` w != 1 applies classifier-free guidance
``uncond + w (cond - uncond)`` with the model's unconditional class ``pairs.null_class`` (its
last class id). A pipeline with a ``vae/`` is a latent pipeline: pairs are latents (the
manifest records it) and :func:`decoder_of` maps them to images through the VAE.
Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PairsConfig
from ..errors import KDMError
from ..io import sha256_file
from .python import check_output
from .registry import TeacherUnavailable, register

INSTALL = "pip install 'koopman-distill[diffusers]'"
# our solver name -> (diffusers scheduler class, settings it gets on top of the folder's config)
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                "solver_order": 2, "use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
}
DEFAULT_STEPS = 25
MODEL_DIRS = ("unet", "transformer")


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise KDMError(f"diffusers teachers need the diffusers package; install it with "
                       f"{INSTALL}") from None
    return diffusers


def _tree_sha256(root: Path, parts: list[str]) -> dict[str, str]:
    """sha256 of every file the teacher reads: ``parts`` are files or folders under ``root``."""
    out = {}
    for part in parts:
        p = root / part
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f.relative_to(root))] = sha256_file(f)
    return out


def _locate(folder: str) -> tuple[Path, dict[str, Any] | None, Path]:
    """The folder, its ``model_index.json`` (None for a bare model folder) and the model's
    subfolder (the folder itself for a bare model)."""
    root = Path(folder).expanduser()
    if not root.exists():
        if folder.count("/") == 1 and not folder.startswith((".", "/", "~")):
            raise KDMError(f"diffusers:{folder} is not a local directory; koopman-distill never "
                           "downloads models: fetch it yourself (e.g. `huggingface-cli "
                           f"download {folder} --local-dir DIR`) and give diffusers:DIR")
        raise KDMError(f"diffusers:{folder}: no such directory; give a folder written by "
                       "save_pretrained")
    if not root.is_dir():
        raise KDMError(f"diffusers:{folder} is not a directory; give a folder written by "
                       "save_pretrained")
    root = root.resolve()
    index = root / "model_index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
        for sub in MODEL_DIRS:
            if sub in meta and (root / sub / "config.json").is_file():
                if "scheduler" not in meta or not (root / "scheduler").is_dir():
                    raise KDMError(f"diffusers:{folder} has no scheduler/ with a scheduler "
                                   "config; save the pipeline with its scheduler")
                return root, meta, root / sub
        raise KDMError(f"diffusers:{folder} names no unet/ or transformer/ with a config.json; "
                       "give a pipeline folder written by save_pretrained")
    if (root / "config.json").is_file():
        return root, None, root
    raise KDMError(f"diffusers:{folder} holds no diffusers model: no model_index.json (a "
                   "pipeline) and no config.json (a model); give a folder written by "
                   "save_pretrained")


def _scheduler_config(path: Path) -> dict[str, Any]:
    file = path / "scheduler_config.json"
    if not file.is_file():
        raise KDMError(f"{path} has no scheduler_config.json; save the pipeline with its "
                       "scheduler")
    return json.loads(file.read_text())


def _load(diffusers: Any, path: Path, what: str) -> Any:
    cfg = json.loads((path / "config.json").read_text())
    cls = getattr(diffusers, str(cfg.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise KDMError(f"{path / 'config.json'} names {cfg.get('_class_name')!r}, which is "
                       f"not a diffusers {what} class of diffusers {diffusers.__version__}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return cls.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)


class DiffusersTeacher(nn.Module):
    """A diffusers UNet / transformer with a deterministic scheduler loop; x_T (B, *shape)
    with std :attr:`sigma_max` -> x_0 (B, *shape) (latents for a latent pipeline)."""

    kind = "diffusers"

    def __init__(self, folder: str | os.PathLike, pairs: PairsConfig | None = None):
        super().__init__()
        diffusers = _diffusers()
        pairs = pairs or PairsConfig()
        root, index, model_dir = _locate(str(folder))
        self.folder, self.pipeline = root, index is not None
        self.model = _load(diffusers, model_dir, "model").eval().requires_grad_(False)
        mcfg = self.model.config
        size = mcfg.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (int(mcfg.in_channels), *map(int, size))
        self.scheduler_config = (_scheduler_config(root / "scheduler") if self.pipeline
                                 else {})
        self.solver = self._solver(pairs.solver, self.scheduler_config.get("_class_name"))
        self.steps = pairs.steps or DEFAULT_STEPS
        self.scheduler = self.make_scheduler(self.solver, self.steps)
        self.prediction_type = self.scheduler.config.prediction_type
        self.sigma_max = float(self.scheduler.init_noise_sigma)
        self.guidance, self.null_class = float(pairs.guidance), int(pairs.null_class)
        self.num_classes = self._classes(mcfg)
        self.vae = None
        if self.pipeline and "vae" in index and (root / "vae" / "config.json").is_file():
            self.vae = _load(diffusers, root / "vae", "VAE").eval().requires_grad_(False)
        parts = (["model_index.json", model_dir.name, "scheduler"] + (["vae"] if self.vae else [])
                 if self.pipeline else [p.name for p in root.iterdir() if p.is_file()])
        self.files = _tree_sha256(root, parts)
        self.versions = {"diffusers": diffusers.__version__, "torch": torch.__version__}

    def _solver(self, asked: str, folder_scheduler: str | None) -> str:
        deterministic = ", ".join(SOLVERS)
        if asked:
            return asked  # checked by make_scheduler
        for name, (cls, _) in SOLVERS.items():
            if cls == folder_scheduler:
                return name
        if folder_scheduler is None:
            raise KDMError(f"{self.folder} is a bare model folder; choose its solver with "
                           f"--set pairs.solver=SOLVER ({deterministic})")
        raise KDMError(f"the scheduler of {self.folder} is {folder_scheduler}, not a "
                       f"deterministic solver; choose one with --set pairs.solver=SOLVER "
                       f"({deterministic})")

    def _classes(self, mcfg: Any) -> int:
        """Class count from the model config: a UNet's ``num_class_embeds`` (its last id is the
        null class when one is given), a DiT's ``num_embeds_ada_norm``."""
        if getattr(mcfg, "num_embeds_ada_norm", None) and "Transformer" in type(
                self.model).__name__:
            table = int(mcfg.num_embeds_ada_norm) + 1  # DiT's null class is its last id
            classes = table - 1
        else:
            table = int(getattr(mcfg, "num_class_embeds", None) or 0)
            classes = table - 1 if self.null_class >= 0 else table
        if not table and (self.guidance != 1.0 or self.null_class >= 0):
            raise KDMError(f"{self.folder} is an unconditional model; pairs.guidance and "
                           "pairs.null_class are for class-conditional ones: drop them")
        if self.guidance != 1.0 and self.null_class < 0:
            raise KDMError("pairs.guidance needs the model's unconditional class: give "
                           f"--set pairs.null_class={table - 1} (its last class id)")
        if self.null_class >= 0 and self.null_class != table - 1:
            raise KDMError(f"pairs.null_class must be the model's last class id, {table - 1}; "
                           f"got {self.null_class}")
        return classes

    def make_scheduler(self, solver: str, steps: int, device: Any = None) -> Any:
        """diffusers' scheduler of ``solver`` on the folder's config, set to ``steps``."""
        if solver not in SOLVERS:
            raise KDMError(f"unknown or stochastic solver {solver!r} for a diffusers teacher; "
                           f"choose a deterministic one: {', '.join(SOLVERS)}")
        if steps < 1:
            raise KDMError(f"pairs.steps must be >= 1, got {steps}")
        cls_name, extra = SOLVERS[solver]
        sched = getattr(_diffusers(), cls_name).from_config({**self.scheduler_config, **extra})
        sched.set_timesteps(steps, device=device)
        return sched

    # -- the protocol ---------------------------------------------------------------------
    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        """Network evaluations per sample: the scheduler's model calls for ``steps`` (Heun: two
        per step but the last), doubled under guidance."""
        sched = self.make_scheduler(solver or self.solver, self.steps if steps is None else steps)
        return len(sched.timesteps) * (2 if self.guidance != 1.0 else 1)

    def sampler(self) -> dict[str, Any]:
        return {"method": self.solver, "steps": self.steps,
                "scheduler": type(self.scheduler).__name__,
                "prediction_type": self.prediction_type, "guidance": self.guidance,
                "null_class": self.null_class}

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder), "num_classes": self.num_classes,
                "model": type(self.model).__name__, "files_sha256": self.files,
                "latent": self.latent(), "sampler": self.sampler(), "nfe": self.nfe(),
                "versions": self.versions}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder), "solver": self.solver,
                "steps": self.steps, "guidance": self.guidance, "null_class": self.null_class,
                "files_sha256": self.files}

    def latent(self) -> dict[str, Any] | None:
        """For a latent pipeline: the VAE and its scaling factor (None in pixel space)."""
        if self.vae is None:
            return None
        return {"vae": str(self.folder / "vae"),
                "scaling_factor": float(self.vae.config.scaling_factor)}

    def _model_output(self, x: torch.Tensor, t: torch.Tensor,
                      y: torch.Tensor | None) -> torch.Tensor:
        tb = t.reshape(1).to(x.device).expand(len(x))
        guided = self.guidance != 1.0
        if guided:
            x, tb = torch.cat([x, x]), torch.cat([tb, tb])
            y = torch.cat([y, torch.full_like(y, self.null_class)])
        out = self.model(x, tb, class_labels=y)
        out = getattr(out, "sample", out[0] if isinstance(out, tuple) else out)
        if out.shape[1] == 2 * self.shape[0]:  # a learned variance: keep the prediction
            out = out[:, :self.shape[0]]
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + self.guidance * (cond - uncond)
        return out

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """x_0 (B, *shape) of x_T = noise (B, *shape) with std :attr:`sigma_max`. Another
        ``solver`` than the teacher's starts from the same noise rescaled to its own
        ``init_noise_sigma`` (a VP and a VE scheduler integrate the same ODE)."""
        if labels is not None and not self.num_classes:
            raise KDMError(f"{self.folder} is an unconditional model but labels were given")
        if labels is None and self.num_classes:
            raise KDMError(f"{self.folder} is class-conditional ({self.num_classes} classes); "
                           "give labels")
        if tuple(noise.shape[1:]) != self.shape:
            raise KDMError(f"noise must have shape (B, {', '.join(map(str, self.shape))}), got "
                           f"{tuple(noise.shape)}")
        sched = self.make_scheduler(solver or self.solver, self.steps if steps is None else steps,
                                    noise.device)
        x = noise * (float(sched.init_noise_sigma) / self.sigma_max)
        for t in sched.timesteps:
            out = self._model_output(sched.scale_model_input(x, t), t, labels)
            x = sched.step(out, t, x).prev_sample
        return check_output(x, noise, f"diffusers teacher {self.folder}")


def _parse(target: str, pairs: PairsConfig) -> DiffusersTeacher:
    return DiffusersTeacher(target, pairs)


def _rebuild(spec: dict[str, Any], device: torch.device) -> DiffusersTeacher:
    folder = Path(spec.get("folder") or "")
    if not folder.is_dir():
        raise TeacherUnavailable(f"the diffusers teacher's folder {folder} is not on this "
                                 "machine")
    pairs = PairsConfig(solver=spec["solver"], steps=spec["steps"], guidance=spec["guidance"],
                        null_class=spec["null_class"])
    teacher = DiffusersTeacher(folder, pairs)
    if teacher.files != spec.get("files_sha256"):
        raise TeacherUnavailable(f"the files of the diffusers teacher {folder} changed since "
                                 "it made the pairs")
    return teacher.to(device)


def decoder_of(identity: dict[str, Any], device: torch.device) -> Callable | None:
    """The VAE decoder of a latent pipeline's teacher identity, or None (pixel space)."""
    latent = identity.get("latent") if isinstance(identity, dict) else None
    if not latent:
        return None
    if not (isinstance(latent, dict) and isinstance(latent.get("vae"), str)
            and isinstance(latent.get("scaling_factor"), (int, float))
            and not isinstance(latent["scaling_factor"], bool)):
        raise KDMError(f"the teacher's latent record {latent!r} is damaged (expected a VAE "
                       "path and a scaling factor); restore run.json or retrain")
    path = Path(latent["vae"])
    if not (path / "config.json").is_file():
        raise KDMError(f"the VAE {path} that decodes this run's latents is not on this "
                       "machine; copy the pipeline there (the run records its path)")
    vae = _load(_diffusers(), path, "VAE").eval().requires_grad_(False).to(device)
    scale = float(latent["scaling_factor"])

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(device) / scale).sample.clamp(-1, 1)
    return decode


register("diffusers", _rebuild, _parse, decoder_of)
